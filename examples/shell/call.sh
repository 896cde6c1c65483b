#!/usr/bin/env bash
# Call a command on another twin through the local rmb-peer with nothing
# but redis-cli, base64 and a JSON one-liner.
#
#   examples/shell/call.sh DST_TWIN COMMAND 'PAYLOAD' [REDIS_URL]
#   examples/shell/call.sh 7 calc.add '[1,2]' redis://127.0.0.1:6379/1
#
# It pushes an outgoing request on msgbus.system.local, waits on its own
# reply queue and prints the decoded answer (or the error) as JSON.
set -euo pipefail
dst=${1:?destination twin}; cmd=${2:?command}; payload=${3:-}; url=${4:-redis://127.0.0.1:6379}

ref="sh-$$-$RANDOM"
ret="msgbus.reply.$ref"
dat=$(printf '%s' "$payload" | base64 -w0)
req=$(printf '{"ver":1,"ref":"%s","cmd":"%s","exp":30,"dat":"%s","tag":null,"dst":[%s],"ret":"%s","shm":"application/json","now":%s}' \
  "$ref" "$cmd" "$dat" "$dst" "$ret" "$(date +%s)")

redis-cli -u "$url" LPUSH msgbus.system.local "$req" >/dev/null
# BRPOP prints the key and the value on two lines; keep the value.
resp=$(redis-cli -u "$url" --raw BRPOP "$ret" 35 | tail -n 1)
if [[ -z "$resp" ]]; then
  echo "no answer within 35s" >&2
  exit 1
fi
# Decode dat with python3 (present on most systems) for a readable answer.
python3 -c '
import base64, json, sys
r = json.loads(sys.argv[1])
# Only the peer should push on ret: check it is the answer to this call.
if r.get("ref") != sys.argv[2] or str(r.get("src", "")).split(":")[0] != sys.argv[3]:
    print("not an answer to this call: " + sys.argv[1], file=sys.stderr); sys.exit(1)
if r.get("err"):
    print(json.dumps({"from": r["src"], "error": r["err"]})); sys.exit(1)
print(json.dumps({"from": r["src"], "answer": base64.b64decode(r["dat"]).decode()}))
' "$resp" "$ref" "$dst"
