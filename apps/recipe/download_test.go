package recipe_test

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// platform is the real broker and ingest pipeline on a port-0 listener.
type platform struct {
	env  *tenanttest.Env
	b    *broker.Broker
	port string
}

func startPlatform(t *testing.T) *platform {
	t.Helper()
	env := tenanttest.New(t)
	pipe, err := ingest.New(ingest.Config{FlushInterval: 10 * time.Millisecond}, env.DB.System, env.Tenants, nil)
	if err != nil {
		t.Fatal(err)
	}
	pipe.Start()
	t.Cleanup(func() { _ = pipe.Close(context.Background()) })
	b, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0"}, env.Tenants, pipe, pipe)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	_, port, _ := net.SplitHostPort(b.TCPAddr())
	return &platform{env: env, b: b, port: port}
}

// device is a paho client with the device's own credentials, subscribed to
// its recipe command topic.
type device struct {
	c   paho.Client
	got chan []byte
}

func connectDevice(t *testing.T, p *platform, tn tenanttest.Tenant, key, secret string) *device {
	t.Helper()
	user := tenants.MQTTUsername(key, tn.Slug)
	opts := paho.NewClientOptions().AddBroker("tcp://127.0.0.1:" + p.port).SetClientID(user).SetUsername(user).
		SetPassword(secret).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", user, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	d := &device{c: c, got: make(chan []byte, 10)}
	tok := c.Subscribe(recipe.Topic(tn.Slug, key), 1, func(_ paho.Client, m paho.Message) {
		if len(m.Payload()) > 0 { // an empty retained publish clears the command
			d.got <- append([]byte(nil), m.Payload()...)
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if st := tok.(*paho.SubscribeToken).Result()[recipe.Topic(tn.Slug, key)]; st > 1 {
		t.Fatalf("subscription refused: %#x", st)
	}
	return d
}

func (d *device) receive(t *testing.T) recipe.Command {
	t.Helper()
	select {
	case b := <-d.got:
		var c recipe.Command
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatalf("command %s: %v", b, err)
		}
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("no recipe command received")
	}
	return recipe.Command{}
}

func (d *device) reply(t *testing.T, tn tenanttest.Tenant, key string, r recipe.Reply) {
	t.Helper()
	b, _ := json.Marshal(r)
	tok := d.c.Publish(recipe.Topic(tn.Slug, key)+"/reply", 1, false, b)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reply: %v", tok.Error())
	}
}

// waitStatus polls the reply feed until the download has status.
func waitStatus(t *testing.T, ctx context.Context, svc *recipe.Service, feed *ingest.Feed, id, status string) recipe.Download {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := feed.Poll(ctx); err != nil {
			t.Fatal(err)
		}
		d, err := svc.Download(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status == status {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("download %s is %s, want %s", id, d.Status, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDownloadToDevices: a released version reaches a connected device
// (paho, its own credentials) and an offline one when it connects; their
// replies (applied, rejected with a reason) show in the API; a device that
// never answers times out after its attempts.
func TestDownloadToDevices(t *testing.T) {
	p := startPlatform(t)
	env := p.env
	tn := env.NewTenant(t)
	ctx := context.Background()
	if _, err := env.Tenants.CreateLine(ctx, tn.ID, tenants.LineInput{Key: "ndfeb-1", Name: "NdFeB 1"}); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{}
	for key, model := range map[string]string{"sinter-01": "sintering-furnace", "sinter-02": "sintering-furnace",
		"sinter-03": "sintering-furnace", "press-01": "orientation-press", "aging-01": "aging-furnace"} {
		_, s, err := env.Tenants.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: key, Model: model, Line: "ndfeb-1"})
		if err != nil {
			t.Fatal(err)
		}
		secrets[key] = s
	}
	svc := recipe.NewService(&env.DB, p.b, nil)
	feed := svc.ReplyFeed()
	// Retries come fast here: the test steps the job with DispatchDue.
	svc.RetryBase, svc.RetryMax = time.Millisecond, time.Millisecond
	_, bob := approved(t, svc, tn, "R-DL")

	online := connectDevice(t, p, tn, "sinter-01", secrets["sinter-01"])
	v, ds, err := svc.Release(bob, "R-DL", "1", recipe.ReleaseInput{Lines: []string{"ndfeb-1"}})
	if err != nil {
		t.Fatal(err)
	}
	// Three furnaces and the press have parameters; the aging furnace none.
	byDevice := map[string]recipe.Download{}
	for _, d := range ds {
		byDevice[d.Device] = d
		if d.Status != recipe.Sent || d.Attempts != 1 {
			t.Errorf("download %s: %s after %d attempts, want sent after 1", d.Device, d.Status, d.Attempts)
		}
	}
	if len(ds) != 4 || byDevice["aging-01"].Device != "" {
		t.Fatalf("downloads %+v", ds)
	}

	cmd := online.receive(t)
	want := byDevice["sinter-01"]
	if cmd.Download != want.ID || cmd.Recipe != "R-DL" || cmd.Version != 1 || cmd.VersionID != v.ID || cmd.Grade != "N42" ||
		len(cmd.Parameters) != 2 || cmd.Parameters[0] != (recipe.CommandParameter{Key: "zone1_temp", Setpoint: 1060, Lower: 1050, Upper: 1070, Unit: "°C", Step: "sintering hold"}) ||
		cmd.Parameters[1].Key != "vacuum_pa" || cmd.Parameters[1].Unit != "Pa" {
		t.Fatalf("command %+v", cmd)
	}
	online.reply(t, tn, "sinter-01", recipe.Reply{Download: cmd.Download.String(), Status: "applied"})
	tctx := tenants.WithTenant(ctx, tn.ID)
	if d := waitStatus(t, tctx, svc, feed, cmd.Download.String(), recipe.Applied); d.RepliedAt == nil {
		t.Fatalf("applied without a reply time: %+v", d)
	}

	// The offline furnace connects after the release and gets its download.
	late := connectDevice(t, p, tn, "sinter-02", secrets["sinter-02"])
	cmd2 := late.receive(t)
	if cmd2.Download != byDevice["sinter-02"].ID || len(cmd2.Parameters) != 2 {
		t.Fatalf("late command %+v", cmd2)
	}
	late.reply(t, tn, "sinter-02", recipe.Reply{Download: cmd2.Download.String(), Status: "rejected", Reason: "vacuum pump offline"})
	if d := waitStatus(t, tctx, svc, feed, cmd2.Download.String(), recipe.Rejected); d.Reason != "vacuum pump offline" {
		t.Fatalf("rejected: %+v", d)
	}

	// The press never answers: retried, then timed out.
	press := byDevice["press-01"].ID.String()
	for i := 0; i < 20; i++ {
		time.Sleep(5 * time.Millisecond)
		if _, err := svc.DispatchDue(tctx); err != nil {
			t.Fatal(err)
		}
		if d, _ := svc.Download(tctx, press); d.Status == recipe.TimedOut {
			break
		}
	}
	if d, _ := svc.Download(tctx, press); d.Status != recipe.TimedOut || d.Attempts != d.MaxAttempts || !strings.Contains(d.Reason, "no reply") {
		t.Fatalf("unanswered download: %+v", d)
	}

	// The API view: which device runs which version.
	eq, err := svc.Equipment(tctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]recipe.Equipment{}
	for _, e := range eq {
		got[e.Device] = e
	}
	if r := got["sinter-01"].Running; r == nil || r.Version != 1 || r.Recipe != "R-DL" || r.Download != cmd.Download {
		t.Fatalf("sinter-01 runs %+v", got["sinter-01"])
	}
	if got["sinter-02"].Running != nil || got["sinter-02"].Latest.Status != recipe.Rejected || got["press-01"].Latest.Status != recipe.TimedOut {
		t.Fatalf("equipment %+v", eq)
	}

	// A reply naming another device's download is refused, not applied.
	online.reply(t, tn, "sinter-01", recipe.Reply{Download: byDevice["sinter-03"].ID.String(), Status: "applied"})
	time.Sleep(100 * time.Millisecond)
	if _, err := feed.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _ := svc.Download(tctx, byDevice["sinter-03"].ID.String()); d.Status == recipe.Applied {
		t.Fatalf("another device's reply changed sinter-03's download: %+v", d)
	}
	// It is refused with the reason, as is a malformed reply.
	tok := online.c.Publish(recipe.Topic(tn.Slug, "sinter-01")+"/reply", 1, false, []byte(`{"Download":"`+cmd.Download.String()+`","status":"applied"}`))
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := feed.Poll(ctx); err != nil {
			t.Fatal(err)
		}
		var reasons []string
		rows, err := env.DB.System.Query(ctx, `SELECT error FROM event_feed_seen WHERE consumer = 'recipe.replies' AND tenant_id = $1
			AND error IS NOT NULL ORDER BY event_id`, tn.ID)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var r string
			if err := rows.Scan(&r); err != nil {
				t.Fatal(err)
			}
			reasons = append(reasons, r)
		}
		rows.Close()
		if len(reasons) == 2 {
			if !strings.Contains(reasons[0], "not_found") || !strings.Contains(reasons[1], "Download") {
				t.Fatalf("refusals %q", reasons)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals %q, want 2", reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDownloadWithMosquittoSub: the device side is mosquitto_sub, logged in
// with the device's own credentials after the release (offline at release
// time): it prints the retained command.
func TestDownloadWithMosquittoSub(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Fatal("mosquitto_sub is needed (apt-get install -y mosquitto-clients)")
	}
	p := startPlatform(t)
	env := p.env
	tn := env.NewTenant(t)
	ctx := context.Background()
	if _, err := env.Tenants.CreateLine(ctx, tn.ID, tenants.LineInput{Key: "ndfeb-1", Name: "NdFeB 1"}); err != nil {
		t.Fatal(err)
	}
	_, secret, err := env.Tenants.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: "sinter-09", Model: "sintering-furnace", Line: "ndfeb-1"})
	if err != nil {
		t.Fatal(err)
	}
	svc := recipe.NewService(&env.DB, p.b, nil)
	_, bob := approved(t, svc, tn, "R-MS")
	_, ds, err := svc.Release(bob, "R-MS", "1", recipe.ReleaseInput{Lines: []string{"ndfeb-1"}})
	if err != nil || len(ds) != 1 {
		t.Fatalf("release: %v %v", ds, err)
	}
	user := tenants.MQTTUsername("sinter-09", tn.Slug)
	run := func(topic string, wait ...string) string {
		w := "10"
		if len(wait) > 0 {
			w = wait[0]
		}
		out, err := exec.Command(bin, "-h", "127.0.0.1", "-p", p.port, "-u", user, "-P", secret, "-i", user,
			"-q", "1", "-t", topic, "-C", "1", "-W", w, "-v").CombinedOutput()
		t.Logf("mosquitto_sub -t %s: %v\n%s", topic, err, out)
		return string(out)
	}
	out := run(recipe.Topic(tn.Slug, "sinter-09"))
	if !strings.HasPrefix(out, recipe.Topic(tn.Slug, "sinter-09")+" {") || !strings.Contains(out, `"download":"`+ds[0].ID.String()+`"`) ||
		!strings.Contains(out, `"key":"zone1_temp"`) {
		t.Fatalf("mosquitto_sub printed %q", out)
	}
	// Retiring the version clears the retained command: a new subscriber
	// gets nothing (mosquitto_sub gives up after 2 s). (Retire, not the
	// reply, because it runs in this test's service: the reply feed may be
	// applied by another process's job on the shared database, which clears
	// its own broker's copy.)
	if _, err := svc.Retire(bob, "R-MS", "1", recipe.TransitionInput{}); err != nil {
		t.Fatal(err)
	}
	if again := run(recipe.Topic(tn.Slug, "sinter-09"), "2"); strings.Contains(again, "{") {
		t.Fatalf("the command is still retained after the retirement: %q", again)
	}
	// The device answers with mosquitto_pub; the API shows it applied (a
	// device that applied a superseded download does run it).
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Fatal("mosquitto_pub is needed (apt-get install -y mosquitto-clients)")
	}
	out2, err := exec.Command(pub, "-h", "127.0.0.1", "-p", p.port, "-u", user, "-P", secret, "-i", user+"-pub", "-q", "1",
		"-t", recipe.Topic(tn.Slug, "sinter-09")+"/reply", "-m", `{"download":"`+ds[0].ID.String()+`","status":"applied"}`, "-d").CombinedOutput()
	if err != nil || !strings.Contains(string(out2), "PUBACK") {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out2)
	}
	d := waitStatus(t, tenants.WithTenant(ctx, tn.ID), svc, svc.ReplyFeed(), ds[0].ID.String(), recipe.Applied)
	if d.Device != "sinter-09" || d.RepliedAt == nil {
		t.Fatalf("download after the reply: %+v", d)
	}
	// Another device's command topic is refused (mosquitto_sub exits 0 on a
	// refused subscription: read what it prints).
	other := run("v1/" + tn.Slug + "/sinter-10/cmd/recipe")
	if strings.Contains(other, "{") || !strings.Contains(other, "denied") {
		t.Fatalf("subscription to another device's commands: %q", other)
	}
}
