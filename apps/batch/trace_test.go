package batch_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// genealogy is the sector's flow, built by hand: raw-material lots → alloy
// flake → powder → pressed → sintered (merge) → machined (split) → plated →
// shipped, with a rework loop (M2 → RW1 → PL2, beside M3 → PL2, so PL2 is
// reached by two paths of different lengths) and a lot unrelated to it all.
var genealogy = []struct{ parent, child, kind string }{
	{"R-ND1", "A1", "consume"}, {"R-FEB1", "A1", "consume"}, {"R-DY1", "A1", "consume"},
	{"R-ND2", "A2", "consume"}, {"R-FEB1", "A2", "consume"}, {"R-PR1", "A2", "consume"},
	{"A1", "P1", "consume"}, {"A2", "P2", "consume"}, {"A1", "P3", "merge"}, {"A2", "P3", "merge"},
	{"P1", "B1", "consume"}, {"P2", "B2", "consume"}, {"P3", "B3", "consume"},
	{"B1", "S1", "merge"}, {"B2", "S1", "merge"}, {"B3", "S2", "consume"},
	{"S1", "M1", "split"}, {"S1", "M2", "split"}, {"S1", "M3", "split"}, {"S2", "M4", "split"},
	{"M2", "RW1", "rework"},
	{"M1", "PL1", "consume"}, {"M3", "PL2", "merge"}, {"RW1", "PL2", "merge"}, {"M4", "PL3", "consume"},
	{"PL1", "SH1", "ship"}, {"PL2", "SH1", "ship"}, {"PL3", "SH2", "ship"}, {"PL2", "SH3", "ship"},
	{"R-OTHER", "A9", "consume"},
}

var rawLots = []string{"R-ND1", "R-ND2", "R-FEB1", "R-DY1", "R-PR1", "R-OTHER"}

// seedGenealogy creates the scenario's lots, links and shipments through the
// service and returns it.
func seedGenealogy(t *testing.T, svc *batch.Service, ctx context.Context) {
	t.Helper()
	made := map[string]bool{}
	lot := func(code string) {
		if made[code] {
			return
		}
		made[code] = true
		kind := "wip"
		if slices.Contains(rawLots, code) {
			kind = "raw"
		}
		if code[:2] == "SH" {
			kind = "finished"
		}
		if _, err := svc.CreateLot(ctx, batch.LotInput{Code: code, Product: "magnet-block", Kind: kind, Quantity: 1000}); err != nil {
			t.Fatalf("lot %s: %v", code, err)
		}
	}
	for _, l := range genealogy {
		lot(l.parent)
		lot(l.child)
		if _, err := svc.CreateLink(ctx, batch.LinkInput{Parent: l.parent, Child: l.child, Kind: l.kind, Quantity: 10}); err != nil {
			t.Fatalf("link %s → %s: %v", l.parent, l.child, err)
		}
	}
	for _, c := range []string{"CUST-1", "CUST-2"} {
		if _, err := svc.CreateCustomer(ctx, batch.CustomerInput{Code: c, Name: "Customer " + c}); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	for _, s := range []batch.ShipmentInput{
		{Code: "SHIP-A", Customer: "CUST-1", ShippedAt: at, Lots: []batch.ShipmentLotIn{{Lot: "SH1", Quantity: 20}}},
		{Code: "SHIP-B", Customer: "CUST-2", ShippedAt: at.Add(time.Hour), Lots: []batch.ShipmentLotIn{{Lot: "SH2", Quantity: 10}, {Lot: "SH3", Quantity: 10}}},
	} {
		if _, err := svc.CreateShipment(ctx, s); err != nil {
			t.Fatalf("shipment %s: %v", s.Code, err)
		}
	}
}

func TestTraceGenealogy(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := tn.Ctx()
	svc := batch.NewService(&env.DB, nil)
	seedGenealogy(t, svc, ctx)

	for _, tc := range []struct {
		lot, direction string
		maxDepth       int
		want           map[string]int // lot → minimum depth
		truncated      bool
		shipments      []string
	}{
		{lot: "SH1", direction: batch.Backward, want: map[string]int{
			"SH1": 0, "PL1": 1, "PL2": 1, "M1": 2, "M3": 2, "RW1": 2, "S1": 3, "M2": 3, "B1": 4, "B2": 4,
			"P1": 5, "P2": 5, "A1": 6, "A2": 6, "R-ND1": 7, "R-FEB1": 7, "R-DY1": 7, "R-ND2": 7, "R-PR1": 7},
			shipments: []string{"SHIP-A"}},
		{lot: "SH2", direction: batch.Backward, want: map[string]int{
			"SH2": 0, "PL3": 1, "M4": 2, "S2": 3, "B3": 4, "P3": 5, "A1": 6, "A2": 6,
			"R-ND1": 7, "R-FEB1": 7, "R-DY1": 7, "R-ND2": 7, "R-PR1": 7},
			shipments: []string{"SHIP-B"}},
		{lot: "R-FEB1", direction: batch.Forward, want: map[string]int{
			"R-FEB1": 0, "A1": 1, "A2": 1, "P1": 2, "P2": 2, "P3": 2, "B1": 3, "B2": 3, "B3": 3, "S1": 4, "S2": 4,
			"M1": 5, "M2": 5, "M3": 5, "M4": 5, "PL1": 6, "PL2": 6, "RW1": 6, "PL3": 6, "SH1": 7, "SH2": 7, "SH3": 7},
			shipments: []string{"SHIP-A", "SHIP-B"}},
		{lot: "R-DY1", direction: batch.Forward, want: map[string]int{
			"R-DY1": 0, "A1": 1, "P1": 2, "P3": 2, "B1": 3, "B3": 3, "S1": 4, "S2": 4,
			"M1": 5, "M2": 5, "M3": 5, "M4": 5, "PL1": 6, "PL2": 6, "RW1": 6, "PL3": 6, "SH1": 7, "SH2": 7, "SH3": 7},
			shipments: []string{"SHIP-A", "SHIP-B"}},
		// PL2 is reached through M3 (depth 2) and through M2 → RW1 (depth 3):
		// listed once, at its minimum depth.
		{lot: "S1", direction: batch.Forward, want: map[string]int{
			"S1": 0, "M1": 1, "M2": 1, "M3": 1, "PL1": 2, "PL2": 2, "RW1": 2, "SH1": 3, "SH3": 3},
			shipments: []string{"SHIP-A", "SHIP-B"}},
		{lot: "M2", direction: batch.Forward, want: map[string]int{"M2": 0, "RW1": 1, "PL2": 2, "SH1": 3, "SH3": 3},
			shipments: []string{"SHIP-A", "SHIP-B"}},
		{lot: "RW1", direction: batch.Backward, want: map[string]int{
			"RW1": 0, "M2": 1, "S1": 2, "B1": 3, "B2": 3, "P1": 4, "P2": 4, "A1": 5, "A2": 5,
			"R-ND1": 6, "R-FEB1": 6, "R-DY1": 6, "R-ND2": 6, "R-PR1": 6}, shipments: []string{}},
		{lot: "SH1", direction: batch.Backward, maxDepth: 2, truncated: true, want: map[string]int{
			"SH1": 0, "PL1": 1, "PL2": 1, "M1": 2, "M3": 2, "RW1": 2}, shipments: []string{"SHIP-A"}},
		{lot: "R-OTHER", direction: batch.Forward, want: map[string]int{"R-OTHER": 0, "A9": 1}, shipments: []string{}},
		{lot: "R-ND1", direction: batch.Backward, want: map[string]int{"R-ND1": 0}, shipments: []string{}},
		{lot: "SH3", direction: batch.Forward, want: map[string]int{"SH3": 0}, shipments: []string{"SHIP-B"}},
	} {
		name := fmt.Sprintf("%s %s depth %d", tc.lot, tc.direction, tc.maxDepth)
		tr, err := svc.Trace(ctx, batch.TraceQuery{Lot: tc.lot, Direction: tc.direction, MaxDepth: tc.maxDepth})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := map[string]int{}
		for _, n := range tr.Nodes {
			if _, dup := got[n.Code]; dup {
				t.Errorf("%s: %s listed twice", name, n.Code)
			}
			got[n.Code] = n.Depth
		}
		if !maps.Equal(got, tc.want) {
			t.Errorf("%s: nodes\n got %v\nwant %v", name, got, tc.want)
		}
		// The flat list is ordered by depth; the reported depth is the deepest.
		deepest := 0
		for i, n := range tr.Nodes {
			deepest = max(deepest, n.Depth)
			if i > 0 && tr.Nodes[i-1].Depth > n.Depth {
				t.Errorf("%s: flat list not ordered by depth at %s", name, n.Code)
			}
		}
		if tr.Depth != deepest || tr.Truncated != tc.truncated {
			t.Errorf("%s: depth %d truncated %v, want %d %v", name, tr.Depth, tr.Truncated, deepest, tc.truncated)
		}
		// The edges are exactly the scenario's links between lots of the trace
		// that the walk crossed (into a node backward, out of one forward).
		var wantEdges []string
		for _, l := range genealogy {
			from, to := l.child, l.parent
			if tc.direction == batch.Forward {
				from, to = l.parent, l.child
			}
			_, f := tc.want[from]
			_, g := tc.want[to]
			if f && g {
				wantEdges = append(wantEdges, l.parent+">"+l.child+":"+l.kind)
			}
		}
		var gotEdges []string
		for _, e := range tr.Edges {
			gotEdges = append(gotEdges, e.Parent+">"+e.Child+":"+e.Kind)
		}
		sort.Strings(wantEdges)
		sort.Strings(gotEdges)
		if !slices.Equal(gotEdges, wantEdges) {
			t.Errorf("%s: edges\n got %v\nwant %v", name, gotEdges, wantEdges)
		}
		var ships []string
		for _, s := range tr.Shipments {
			ships = append(ships, s.Code)
		}
		sort.Strings(ships)
		if !slices.Equal(ships, tc.shipments) && !(len(ships) == 0 && len(tc.shipments) == 0) {
			t.Errorf("%s: shipments %v, want %v", name, ships, tc.shipments)
		}
	}

	// Forward from the bad raw-material lot names every customer it reached.
	tr, err := svc.Trace(ctx, batch.TraceQuery{Lot: "R-FEB1", Direction: batch.Forward})
	if err != nil {
		t.Fatal(err)
	}
	customers := map[string]bool{}
	for _, s := range tr.Shipments {
		customers[s.Customer] = true
	}
	if !customers["CUST-1"] || !customers["CUST-2"] || len(customers) != 2 {
		t.Errorf("customers reached = %v", customers)
	}
}
