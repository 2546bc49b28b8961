package quality

import "math/bits"

// Rule is a run rule flagging points of a control chart.
type Rule uint16

// Western Electric rules (WECO Statistical Quality Control Handbook, 1956)
// and Nelson's eight tests (L. S. Nelson, "The Shewhart Control Chart—Tests
// for Special Causes", Journal of Quality Technology 16(4), 1984). σ is the
// chart's sigma, (UCL - center)/3; "same side" is strictly above or strictly
// below the center line (a point on it breaks a run). A point is flagged by a
// rule when the run or window of that rule ending at it is complete; for the
// "k of m" rules the flagged point itself must be one of the k.
const (
	WE1     Rule = 1 << iota // one point beyond 3σ
	WE2                      // 2 of 3 consecutive points beyond 2σ, same side
	WE3                      // 4 of 5 consecutive points beyond 1σ, same side
	WE4                      // 8 consecutive points on one side of the center line
	Nelson1                  // one point beyond 3σ
	Nelson2                  // 9 points in a row on one side of the center line
	Nelson3                  // 6 points in a row steadily increasing or decreasing
	Nelson4                  // 14 points in a row alternating up and down
	Nelson5                  // 2 of 3 points in a row beyond 2σ, same side
	Nelson6                  // 4 of 5 points in a row beyond 1σ, same side
	Nelson7                  // 15 points in a row within 1σ of the center line
	Nelson8                  // 8 points in a row beyond 1σ, either side
)

// Rule sets.
const (
	RulesWE     = WE1 | WE2 | WE3 | WE4
	RulesNelson = Nelson1 | Nelson2 | Nelson3 | Nelson4 | Nelson5 | Nelson6 | Nelson7 | Nelson8
)

var ruleNames = []struct {
	r    Rule
	name string
}{
	{WE1, "we1"}, {WE2, "we2"}, {WE3, "we3"}, {WE4, "we4"},
	{Nelson1, "nelson1"}, {Nelson2, "nelson2"}, {Nelson3, "nelson3"}, {Nelson4, "nelson4"},
	{Nelson5, "nelson5"}, {Nelson6, "nelson6"}, {Nelson7, "nelson7"}, {Nelson8, "nelson8"},
}

// Names returns the names of the rules in r (we1..we4, nelson1..nelson8).
func (r Rule) Names() []string {
	out := []string{}
	for _, x := range ruleNames {
		if r&x.r != 0 {
			out = append(out, x.name)
		}
	}
	return out
}

// bit is 1 for true.
func bit(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// Flags applies the rules in set to the points x of a chart with limits l and
// returns each point's flags. It runs in one pass with run counters, so a
// million points take milliseconds.
func Flags(x []float64, l ControlLimits, set Rule) []Rule {
	out := make([]Rule, len(x))
	if set == 0 || len(x) == 0 {
		return out
	}
	cl := l.Center
	s := (l.UCL - l.Center) / 3
	// The last 3 (beyond 2σ) and 5 (beyond 1σ) points, above and below, as
	// bit windows: bit 0 is the current point.
	var hi2w, lo2w, hi1w, lo1w uint32
	var above, below, up, down, alt, within, outside int
	for i, v := range x {
		var f Rule
		if v > l.UCL || v < l.LCL {
			f |= WE1 | Nelson1
		}
		hi2, lo2 := v > cl+2*s, v < cl-2*s
		hi1, lo1 := v > cl+s, v < cl-s
		hi2w, lo2w = (hi2w<<1|bit(hi2))&0b111, (lo2w<<1|bit(lo2))&0b111
		hi1w, lo1w = (hi1w<<1|bit(hi1))&0b11111, (lo1w<<1|bit(lo1))&0b11111
		if (hi2 && bits.OnesCount32(hi2w) >= 2) || (lo2 && bits.OnesCount32(lo2w) >= 2) {
			f |= WE2 | Nelson5
		}
		if (hi1 && bits.OnesCount32(hi1w) >= 4) || (lo1 && bits.OnesCount32(lo1w) >= 4) {
			f |= WE3 | Nelson6
		}
		switch {
		case v > cl:
			above, below = above+1, 0
		case v < cl:
			above, below = 0, below+1
		default:
			above, below = 0, 0
		}
		if above >= 8 || below >= 8 {
			f |= WE4
		}
		if above >= 9 || below >= 9 {
			f |= Nelson2
		}
		// up/down count consecutive increases/decreases ending at i; alt the
		// points in the current alternating run (a run of k differences spans
		// k+1 points).
		if i > 0 {
			d := v - x[i-1]
			prev := 0.0
			if i > 1 {
				prev = x[i-1] - x[i-2]
			}
			switch {
			case d > 0:
				up, down = up+1, 0
			case d < 0:
				up, down = 0, down+1
			default:
				up, down = 0, 0
			}
			switch {
			case d == 0:
				alt = 1
			case i > 1 && prev != 0 && (d > 0) != (prev > 0):
				alt++
			default:
				alt = 2
			}
		} else {
			alt = 1
		}
		if up >= 5 || down >= 5 {
			f |= Nelson3
		}
		if alt >= 14 {
			f |= Nelson4
		}
		if v < cl+s && v > cl-s {
			within++
		} else {
			within = 0
		}
		if within >= 15 {
			f |= Nelson7
		}
		if hi1 || lo1 {
			outside++
		} else {
			outside = 0
		}
		if outside >= 8 {
			f |= Nelson8
		}
		out[i] = f & set
	}
	return out
}
