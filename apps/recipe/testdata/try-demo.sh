#!/usr/bin/env bash
# Walks the recipe app end to end against a running demo (make run, or
# `nxcloud demo --no-simulator`): a recipe is created, submitted with the API
# key, approved by the owner (a key cannot approve), released to line ndfeb-1;
# mosquitto_sub, logged in as sinter-03 with its own credentials, prints the
# command; mosquitto_pub answers "applied"; the API shows sinter-03 running
# version 1. Then a lot made with the version runs on sinter-03 and telemetry
# published over MQTT crosses the limits twice (1100 above, 1040 below; 1090
# sits exactly on the upper limit and is not a deviation): after the deviation
# job's next pass (Settle 10 s, every 10 s) the API lists exactly two
# deviations and the lot's trace carries them.
#
#   API=http://localhost:8080/api/v1 MQTT_PORT=1883 apps/recipe/testdata/try-demo.sh
#
# mosquitto_sub/mosquitto_pub exit 0 even when refused: read what they print.
set -euo pipefail
API=${API:-http://localhost:8080/api/v1}
P=${MQTT_PORT:-1883}
KEY='Authorization: Bearer nxk_demo_magnets-demo-key'
CODE=${CODE:-R-N42-SINTER-$RANDOM}
LOT=${LOT:-L-DEMO-$RANDOM}
DEV=(-h localhost -p "$P" -u sinter-03@demo-magnets -P demo-device-secret -q 1)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "== the device subscribes"
timeout 30 mosquitto_sub "${DEV[@]}" -i sinter-03-cmd -t 'v1/demo-magnets/sinter-03/cmd/recipe' -v -C 1 >"$out" 2>&1 &
sub=$!
sleep 1
echo "== recipe $CODE: create, submit (API key), approve (owner), release to ndfeb-1"
curl -sf -H "$KEY" -X POST "$API/recipes" -d '{"code":"'"$CODE"'","name":"N42 sintering","grade":"N42",
  "ingredients":[{"material":"PrNd","ratio":31.5,"tolerance":0.2},{"material":"B","ratio":0.98,"tolerance":0.02},
                 {"material":"Fe","balance":true,"tolerance":0}],
  "parameters":[{"model":"sintering-furnace","metric":"zone1_temp","setpoint":1070,"lower":1050,"upper":1090,"step":"hold"}]}' >/dev/null
curl -sf -H "$KEY" -X POST "$API/recipes/$CODE/versions/1/submit" -d '{"comment":"first cut"}' >/dev/null
echo -n "approval with the API key: "
curl -s -H "$KEY" -X POST "$API/recipes/$CODE/versions/1/approve" -d '{"comment":"ok"}' | sed 's/.*"detail":"\([^"]*\)".*/\1/'
token=$(curl -sf -X POST "$API/auth/login" -d '{"email":"owner@demo-magnets.example","password":"demo-owner-password"}' |
  sed 's/.*"token":"\([^"]*\)".*/\1/')
curl -sf -H "Authorization: Bearer $token" -X POST "$API/recipes/$CODE/versions/1/approve" -d '{"comment":"ok"}' >/dev/null
curl -sf -H "$KEY" -X POST "$API/recipes/$CODE/versions/1/release" -d '{"lines":["ndfeb-1"]}' >/dev/null
wait "$sub" || true
echo "== mosquitto_sub printed:"
cat "$out"
download=$(sed -n 's/.*"download":"\([^"]*\)".*/\1/p' "$out")
[ -n "$download" ] || { echo "no command received"; exit 1; }
mosquitto_pub "${DEV[@]}" -i sinter-03-reply -t 'v1/demo-magnets/sinter-03/cmd/recipe/reply' \
  -m '{"download":"'"$download"'","status":"applied"}'
sleep 3
echo "== which device runs which version"
curl -sf -H "$KEY" "$API/recipe-equipment" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"]:
    r = e.get("running") or {}
    print(e["device"], "runs", r.get("recipe"), r.get("version"), "| latest download", e["latest"]["status"])'

echo "== lot $LOT runs on sinter-03; telemetry crosses the limits"
vid=$(curl -sf -H "$KEY" "$API/recipes/$CODE/versions/1" | sed 's/^{"id":"\([^"]*\)".*/\1/')
now=$(date -u +%s)
curl -sf -H "$KEY" -X POST "$API/lots" -d '{"code":"'"$LOT"'","grade":"N42","recipe_version_id":"'"$vid"'","status":"running"}' >/dev/null
curl -sf -H "$KEY" -X POST "$API/lots/$LOT/runs" \
  -d '{"device":"sinter-03","started_at":"'"$(date -u -d @$((now - 120)) +%Y-%m-%dT%H:%M:%SZ)"'"}' >/dev/null
msg='['
for pair in 100:1060 90:1095 80:1100 70:1070 60:1040 50:1090 40:1060; do
  s=${pair%%:*} v=${pair##*:}
  [ "$msg" = '[' ] || msg="$msg,"
  msg="$msg{\"ts\":$(((now - s) * 1000)),\"metrics\":{\"zone1_temp\":$v}}"
done
mosquitto_pub "${DEV[@]}" -i sinter-03-tel -t 'v1/demo-magnets/sinter-03/telemetry' -m "$msg]"
echo "waiting 25 s for the deviation job..."
sleep 25
curl -sf -H "$KEY" "$API/recipe-deviations?lot=$LOT" | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
for d in items:
    print(d["limit_crossed"], d["started_at"], "->", d.get("ended_at"), "worst", d["worst_value"], "points", d["points"])
sys.exit(0 if len(items) == 2 else "want exactly 2 deviations")'
curl -sf -H "$KEY" "$API/lots/$LOT/trace" | grep -o '"limit_crossed"' | wc -l | xargs echo "deviations in the lot's trace:"
