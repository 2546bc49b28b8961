package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// postJSON sends a JSON body to the platform and decodes the answer into out.
func postJSON(t *testing.T, p *platform, auth, path, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+p.httpLn.Addr().String()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("POST %s: %v in %s", path, err, raw)
		}
	}
	return resp.StatusCode
}

// One operator call onboards an enterprise with its line and devices; the
// devices connect and publish with the returned credentials at once, and the
// returned API key reads their readings. A bad device row refuses the whole
// call and creates nothing.
func TestOnboardWithDevices(t *testing.T) {
	p := startTestPlatform(t)
	op := p.cfg.OperatorToken
	slug := "onb-" + uuid.NewString()[:8]

	bad := fmt.Sprintf(`{"slug":%q,"name":"Onboarded","sector":"magnetic-materials",
		"lines":[{"key":"line-a","name":"Line A"}],
		"devices":[{"key":"sinter-01","name":"S1","model":"sintering-furnace","line":"line-a"},
			{"key":"mill-01","name":"M1","model":"no-such-model","line":"line-a"}]}`, slug)
	var problem map[string]any
	if code := postJSON(t, p, op, "/api/v1/operator/enterprises", bad, &problem); code != 400 {
		t.Fatalf("bad device row: %d %v", code, problem)
	}
	if text := fmt.Sprint(problem); !strings.Contains(text, "row 2") || !strings.Contains(text, "mill-01") {
		t.Errorf("the refusal does not name the row: %v", problem)
	}
	if code := getJSON(t, p, op, "/api/v1/operator/enterprises/"+slug, nil); code != 404 {
		t.Fatalf("the refused call created the enterprise: GET answers %d", code)
	}

	good := strings.Replace(bad, "no-such-model", "jet-mill", 1)
	var out struct {
		Enterprise struct {
			Slug string `json:"slug"`
		} `json:"enterprise"`
		APIKey string `json:"api_key"`
		Lines  []struct {
			Key string `json:"key"`
		} `json:"lines"`
		Devices []struct {
			Device struct {
				Key     string `json:"key"`
				LineKey string `json:"line"`
			} `json:"device"`
			Username string `json:"mqtt_username"`
			Secret   string `json:"secret"`
		} `json:"devices"`
	}
	if code := postJSON(t, p, op, "/api/v1/operator/enterprises", good, &out); code != 201 {
		t.Fatalf("onboard: %d %+v", code, out)
	}
	if out.Enterprise.Slug != slug || out.APIKey == "" || len(out.Lines) != 1 || out.Lines[0].Key != "line-a" || len(out.Devices) != 2 {
		t.Fatalf("onboarded %+v", out)
	}
	metric := map[string]string{"sinter-01": `{"metrics":{"zone1_temp":1050}}`, "mill-01": `{"metrics":{"grind_pressure_mpa":0.7}}`}
	for _, d := range out.Devices {
		if d.Username != d.Device.Key+"@"+slug || d.Secret == "" {
			t.Fatalf("device credentials %+v", d)
		}
		c, err := connect(t, p, d.Username, d.Secret)
		if err != nil {
			t.Fatalf("device %s cannot connect: %v", d.Device.Key, err)
		}
		publish(t, c, "v1/"+slug+"/"+d.Device.Key+"/telemetry", []byte(metric[d.Device.Key]))
	}

	eventually(t, "readings of the onboarded devices", func() string {
		for key, want := range map[string]string{"sinter-01": "zone1_temp", "mill-01": "grind_pressure_mpa"} {
			var raw struct {
				Points []struct {
					Value float64 `json:"value"`
				} `json:"points"`
			}
			if code := getJSON(t, p, out.APIKey, "/api/v1/devices/"+key+"/series?metric="+want, &raw); code != 200 {
				return fmt.Sprintf("%s: status %d", key, code)
			}
			if len(raw.Points) != 1 {
				return fmt.Sprintf("%s %s points %+v", key, want, raw.Points)
			}
		}
		return ""
	})
	for _, d := range out.Devices {
		if d.Device.LineKey != "line-a" {
			t.Errorf("device %s on line %q, want line-a", d.Device.Key, d.Device.LineKey)
		}
	}
}
