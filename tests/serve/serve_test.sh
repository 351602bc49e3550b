#!/usr/bin/env bash
# End-to-end test of `glmrt serve` with real clients (curl, Python threads with urllib, the
# `openai` Python client): a tiny GLM with a sentencepiece tokenizer trained here, served on one
# rank and on 4 MPI ranks (tensor 2 × pipeline 2). Per server:
#   GET /health; POST /generate with text and with prompt_ids (greedy twice gives the same answer,
#   a seeded sample twice too); 100 concurrent requests all answered 200 (greedy answers equal the
#   ones the same prompts got alone); malformed JSON, an unknown field, a wrong type, an
#   out-of-range value, an over-long prompt, a huge body, an unknown path and a wrong method get
#   the right 4xx with a JSON error naming the problem, and /health still answers; the openai
#   client's completions, streamed and not (the chunks add up to the same greedy text); a query in
#   flight when SIGTERM arrives is still answered, and the server exits 0 within seconds.
# The 4-rank server's greedy answers must equal the single rank's. A server on 2 ranks started from a
# pre-quantized checkpoint (`glmrt quantize`, INT8 for tensor 2) gives the log-probabilities of
# `glmrt generate` quantizing the full weights at load on the same layout, to the last bit (and
# not those of the unquantized model). A server of two data-parallel replicas on 2 ranks passes
# the same checks, gives the single rank's answers, and both replicas answer their share.
#
#   tests/serve/serve_test.sh PATH/TO/glmrt [single|mpi|replicas|quantized|all]     (default all)
#
# Everything lives in a temporary directory (GLMRT_SERVE_KEEP=1 keeps it); a server still running
# on exit is killed by PID (trap). Every client call runs under `timeout`.
set -euo pipefail

GLMRT=${1:?usage: serve_test.sh PATH/TO/glmrt [single|mpi|replicas|quantized|all]}
WHICH=${2:-all}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ -x $GLMRT ]] || { echo "FAIL: glmrt binary $GLMRT is not executable" >&2; exit 1; }
for cmd in curl timeout mpiexec; do
  command -v "$cmd" >/dev/null || { echo "FAIL: $cmd is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
"$PYTHON" -c "import openai" 2>/dev/null ||
  { echo "FAIL: $PYTHON has no openai module (scripts/setup.sh installs it: pip install openai)" >&2; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
WORK=$(mktemp -d /tmp/glmrt-serve.XXXXXX)
SERVER_PID="" PORT="" LOG=""

stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
cleanup() {
  local rc=$?
  stop_server
  if [[ ${GLMRT_SERVE_KEEP:-0} == 1 || $rc -ne 0 ]]; then echo "serve_test: files kept in $WORK" >&2
  else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  if [[ -n $LOG && -f $LOG ]]; then echo "----- server log (last 30 lines) -----" >&2; tail -n 30 "$LOG" >&2; fi
  exit 1
}
pass() { echo "ok: $*"; }

# ---- The model: tokenizer, config, seeded weights ------------------------------------------------
"$GLMRT" train-tokenizer --input "$REPO/tests/data/tokenizer_corpus.txt" --vocab-size 800 \
  --output "$WORK/tokenizer.model" --threads 2 2>"$WORK/tokenizer.log" || { cat "$WORK/tokenizer.log" >&2; fail "train-tokenizer"; }
TOKENS=$(grep -o 'tokens: {[^}]*}' "$WORK/tokenizer.log") || fail "no tokens line from train-tokenizer"
cat >"$WORK/serve.yaml" <<EOF
model:
  num_layers: 4
  hidden_size: 64
  num_attention_heads: 4
  ffn_hidden_size: 170
  vocab_size: 816
  max_sequence_length: 128
  layernorm_epsilon: 1.0e-5
  rotary_base: 10000
  rotary_fp16_tables: false
  deepnorm_alpha: null
$TOKENS
tokenizer: {model: tokenizer.model}
EOF
"$GLMRT" init --config "$WORK/serve.yaml" --output "$WORK/weights.safetensors" --seed 7 >/dev/null 2>&1 ||
  fail "glmrt init"

# ---- Client helpers ---------------------------------------------------------------------------------
# http METHOD PATH [BODY]: prints the body, then the status on a line of its own.
http() {
  local args=(-s -S -X "$1" "http://127.0.0.1:$PORT$2" -w '\n%{http_code}')
  [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  timeout 60 curl "${args[@]}" || echo -e "\ncurl-failed"
}
# expect STATUS TEXT METHOD PATH [BODY]: the status is STATUS and the body contains TEXT.
expect() {
  local status=$1 text=$2 out code body
  shift 2
  out=$(http "$@")
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  [[ $code == "$status" ]] || fail "$1 $2: status $code, expected $status; body: ${body:0:300}"
  [[ $body == *"$text"* ]] || fail "$1 $2: body does not contain '$text': ${body:0:300}"
  if [[ $status != 200 ]]; then
    [[ $body == *'"error"'*'"message"'* ]] || fail "$1 $2: error body is not OpenAI-shaped JSON: $body"
  fi
  BODY=$body
}

# start_server LABEL [LAUNCHER... --] [GLMRT FLAGS...]: starts `glmrt serve` on the model SOURCE
# names, reads its port.
SOURCE=(--weights "$WORK/weights.safetensors")
start_server() {
  local label=$1 launcher=() flags=()
  shift
  if [[ " $* " == *" -- "* ]]; then
    while [[ $1 != -- ]]; do launcher+=("$1"); shift; done
    shift
  fi
  flags=("$@")
  LOG=$WORK/server-$label.log
  "${launcher[@]}" "$GLMRT" serve --config "$WORK/serve.yaml" "${SOURCE[@]}" \
    --port 0 "${flags[@]}" 2>"$LOG" >"$WORK/server-$label.out" &
  SERVER_PID=$!
  PORT=""
  for ((i = 0; i < 1200; i++)); do
    PORT=$(grep -o 'glmrt serve: listening on http://127\.0\.0\.1:[0-9]*' "$LOG" | sed 's/.*://') || true
    [[ -n $PORT ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || fail "$label: the server exited before listening"
    sleep 0.1
  done
  [[ -n $PORT ]] || fail "$label: no 'listening on' line within 120 s"
  pass "$label: listening on port $PORT"
}

# The pid of world rank 0 among the children of mpiexec.
rank0_pid() {
  local pid
  for pid in $(pgrep -P "$SERVER_PID"); do
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0' && { echo "$pid"; return; }
  done
}

checks() {  # checks LABEL: every check against the running server; writes $WORK/answers-LABEL.json
  local label=$1
  expect 200 '"status":"ok"' GET /health

  # /generate: text and prompt_ids; greedy and a seeded sample are repeatable.
  local greedy='{"text": "The museum opened a new hall", "sampling_strategy": "greedy", "out_seq_length": 24}'
  expect 200 '"output_ids"' POST /generate "$greedy"
  local first=$BODY
  [[ $first == *'"text"'* && $first == *'"spans"'* ]] || fail "/generate lacks text or spans: $first"
  expect 200 '"output_ids"' POST /generate "$greedy"
  [[ $BODY == "$first" ]] || fail "greedy /generate twice gave different answers: $first vs $BODY"
  local sample='{"text": "Light travels", "sampling_strategy": "BaseStrategy", "seed": 42, "temperature": 0.9, "topk": 40, "topp": 0.9, "out_seq_length": 20}'
  expect 200 '"output_ids"' POST /generate "$sample"
  first=$BODY
  expect 200 '"output_ids"' POST /generate "$sample"
  [[ $BODY == "$first" ]] || fail "a seeded sample twice gave different answers: $first vs $BODY"
  expect 200 '"output_ids"' POST /generate '{"prompt_ids": [10, 20, 30, 40], "sampling_strategy": "greedy", "out_seq_length": 16}'
  expect 200 '"output_ids"' POST /generate '{"text": "A [MASK] in the lake.", "sampling_strategy": "BeamSearchStrategy", "num_beams": 2, "out_seq_length": 20}'
  pass "$label: /generate (text, prompt_ids, greedy and seeded sampling repeatable, beam search)"

  # Errors, then the server still answers.
  expect 400 'JSON' POST /generate '{"text": "a", '
  expect 400 'bogus_field' POST /generate '{"text": "a", "bogus_field": 1}'
  expect 400 '"topk"' POST /generate '{"text": "a", "topk": "many"}'
  expect 400 '"temperature"' POST /generate '{"text": "a", "temperature": -1}'
  expect 400 'sampling_strategy' POST /generate '{"text": "a", "sampling_strategy": "nucleus"}'
  local ids
  ids=$(printf '5,%.0s' {1..200})
  expect 400 '200 tokens, over the limit of 128' POST /generate "{\"prompt_ids\": [${ids%,}]}"
  expect 400 'max_tokens' POST /v1/completions '{"prompt": "a", "max_tokens": "ten"}'
  expect 400 'stop' POST /v1/completions '{"prompt": "a", "stop": 5}'
  head -c 2000000 /dev/zero | tr '\0' 'a' | sed 's/^/{"text": "/; s/$/"}/' >"$WORK/huge.json"
  local out
  out=$(timeout 60 curl -s -o "$WORK/huge.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$WORK/huge.json" "http://127.0.0.1:$PORT/generate") || true
  [[ $out == 413 ]] || fail "a 2 MB body got status $out, expected 413"
  grep -q '"error"' "$WORK/huge.out" || fail "the 413 body is not a JSON error: $(head -c 300 "$WORK/huge.out")"
  expect 404 'no such endpoint' GET /nowhere
  expect 405 'not allowed' GET /generate
  expect 405 'not allowed' POST /health '{}'
  expect 200 '"status":"ok"' GET /health
  pass "$label: bad requests get 400/404/405/413 with JSON errors; the server still answers"

  # 100 concurrent requests (Python threads, urllib): all 200; greedy and seeded-sample answers
  # equal the ones the same queries get alone (a seed reproduces its text in any batch). Writes
  # the solo answers for the comparison across layouts.
  timeout 300 "$PYTHON" - "$PORT" "$WORK/answers-$label.json" <<'PY' || fail "$label: concurrent requests"
import json, sys, threading, urllib.request, urllib.error
port, out = sys.argv[1], sys.argv[2]
prompts = ["The museum opened", "Every morning the baker", "地图上标出了", "Light travels about"]
def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=240) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
def query(k):  # 8 distinct queries: 4 prompts, greedy or a seeded sample
    q = {"text": prompts[k % 4], "out_seq_length": 24}
    q.update({"sampling_strategy": "greedy"} if k < 4 else {"seed": 100 + k, "temperature": 1.0, "topp": 0.95})
    return q
solo = [post("/generate", query(k)) for k in range(8)]
assert all(s == 200 for s, _ in solo), solo
results = [None] * 100
def worker(i):
    if i % 5 == 4:
        results[i] = post("/v1/completions", {"prompt": prompts[i % 4], "max_tokens": 6, "temperature": 0.8, "seed": i})
    else:
        results[i] = post("/generate", query(i % 8))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
for t in threads: t.start()
for t in threads: t.join()
bad = [(i, r) for i, r in enumerate(results) if r is None or r[0] != 200]
assert not bad, f"{len(bad)} of 100 failed, e.g. {bad[:3]}"
for i, (status, body) in enumerate(results):
    if i % 5 != 4 and body != solo[i % 8][1]:
        sys.exit(f"request {i}: answer in a batch {body} differs from alone {solo[i % 8][1]}")
json.dump([b for _, b in solo], open(out, "w"), ensure_ascii=False)
print("ok: 100 concurrent requests answered 200; greedy and seeded answers equal the solo ones")
PY
  expect 200 '"status":"ok"' GET /health
  # The Prometheus counters saw them (and the 400s above).
  expect 200 'glmrt_http_requests_total{path="/generate",status="400"}' GET /metrics
  local served
  served=$(grep -o 'glmrt_http_requests_total{path="/generate",status="200"} [0-9]*' <<<"$BODY" | awk '{print $2}')
  [[ ${served:-0} -ge 88 ]] || fail "$label: /metrics counts ${served:-no} answered /generate requests, expected >= 88"

  # The openai client: plain and streamed completions; the chunks add up to the plain text.
  timeout 120 "$PYTHON" - "$PORT" <<'PY' || fail "$label: openai client"
import sys, openai
client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="x", max_retries=0, timeout=60)
def complete(**kw):
    r = client.completions.create(model="glm", **kw)
    assert r.object == "text_completion" and r.id.startswith("cmpl-"), r
    assert r.choices[0].finish_reason in ("stop", "length"), r
    assert 0 < r.usage.prompt_tokens and r.usage.completion_tokens <= kw["max_tokens"], r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    return r
def stream(**kw):
    chunks = list(client.completions.create(model="glm", stream=True, **kw))
    assert chunks and all(c.choices[0].finish_reason is None for c in chunks[:-1]), chunks
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason, len(chunks)
# Greedy (temperature 0; top_k 1 through extra_body is the same) and a seeded sample (varied
# tokens: byte pieces, Chinese), each plain twice and streamed: the chunks add up to the text.
for prompt in ["The cook quickly repairs", "大型语言模型"]:
    for kw in [dict(temperature=0), dict(temperature=1.0, top_p=1.0, seed=11)]:
        r = complete(prompt=prompt, max_tokens=12, **kw)
        text = r.choices[0].text
        assert complete(prompt=prompt, max_tokens=12, **kw).choices[0].text == text
        streamed, reason, n = stream(prompt=prompt, max_tokens=12, **kw)
        assert streamed == text, f"streamed {streamed!r} != {text!r}"
        assert reason == r.choices[0].finish_reason, (reason, r)
        assert n >= 2, n
        print(f"ok: openai client {kw}: {prompt!r} -> {text!r} ({n} chunks)")
        if kw.get("seed") and len(text) >= 6:  # a stop sequence from the middle of the text
            stop = text[3:5]
            cut = complete(prompt=prompt, max_tokens=12, stop=[stop], **kw)
            assert cut.choices[0].text == text[:text.index(stop)], (cut.choices[0].text, text, stop)
            assert cut.choices[0].finish_reason == "stop", cut
            streamed, reason, _ = stream(prompt=prompt, max_tokens=12, stop=stop, **kw)
            assert (streamed, reason) == (cut.choices[0].text, "stop"), (streamed, reason)
            print(f"ok: stop {stop!r}: {cut.choices[0].text!r}")
    # Penalties: greedy repeats itself on this model; with them, a repeated token is pushed down.
    plain = complete(prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    penalized = complete(prompt=prompt, max_tokens=12, temperature=0, presence_penalty=2.0,
                         frequency_penalty=2.0).choices[0].text
    assert penalized != plain, (penalized, plain)
    print(f"ok: penalties: {plain!r} -> {penalized!r}")
    # logit_bias: +100 on one ordinary piece (ids past the byte pieces) makes greedy repeat it for
    # every token; the logprobs stay the model's (<= 0), not the biased ones.
    r = complete(prompt=prompt, max_tokens=6, temperature=0, logit_bias={"400": 100}, logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 6 and len(set(lp.tokens)) == 1, lp.tokens
    assert all(v <= 0 for v in lp.token_logprobs), lp
    assert r.choices[0].text != plain, (r.choices[0].text, plain)
    print(f"ok: logit_bias +100: {r.choices[0].text!r}")
    # suffix: the completion fills a [MASK] between prompt and suffix (GLM blank infilling); the
    # suffix's tokens count as prompt tokens.
    inner = complete(prompt=prompt, suffix=" by the river.", max_tokens=8, temperature=0)
    bare = complete(prompt=prompt, max_tokens=8, temperature=0)
    assert inner.usage.prompt_tokens > bare.usage.prompt_tokens, (inner.usage, bare.usage)
    print(f"ok: suffix: {prompt!r} + {inner.choices[0].text!r} + ' by the river.'")
    try:
        complete(prompt=prompt + " [MASK] now", suffix=" later", max_tokens=4)
        sys.exit("a suffix with a [MASK] in the prompt was accepted")
    except openai.BadRequestError as e:
        assert "suffix" in str(e), e
    # logprobs: the tokens' texts add up to the text (unchanged by asking); greedy takes the most
    # likely token, so its log-probability is the highest of its top_logprobs; streamed, the
    # chunks carry the same tokens with the same values.
    for kw in [dict(temperature=0), dict(temperature=1.0, top_p=1.0, seed=11)]:
        r = complete(prompt=prompt, max_tokens=12, logprobs=3, **kw)
        lp = r.choices[0].logprobs
        assert r.choices[0].text == complete(prompt=prompt, max_tokens=12, **kw).choices[0].text, r
        assert "".join(lp.tokens) == r.choices[0].text, (lp.tokens, r.choices[0].text)
        assert len(lp.tokens) == r.usage.completion_tokens, (lp, r.usage)
        assert all(v <= 0 for v in lp.token_logprobs), lp
        assert all(1 <= len(t) <= 4 and lp.tokens[i] in t for i, t in enumerate(lp.top_logprobs)), lp
        if kw["temperature"] == 0:
            assert all(abs(v - max(t.values())) < 1e-6 for v, t in zip(lp.token_logprobs, lp.top_logprobs)), lp
        chunks = list(client.completions.create(model="glm", stream=True, prompt=prompt, max_tokens=12,
                                                logprobs=3, **kw))
        tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
        values = [v for c in chunks if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
        assert tokens == lp.tokens and values == lp.token_logprobs, (tokens, values, lp)
        print(f"ok: logprobs {kw}: {[round(v, 3) for v in lp.token_logprobs[:4]]}...")
    top_k = complete(prompt=prompt, max_tokens=12, extra_body={"top_k": 1})
    assert top_k.choices[0].text == complete(prompt=prompt, max_tokens=12, temperature=0).choices[0].text
# n = 3: choice i is the answer to a one-choice request with seed + i, plain and streamed (the
# streamed chunks of the choices interleave; each choice's chunks add up to its text).
kw = dict(prompt="The river", max_tokens=10, temperature=1.0, top_p=1.0)
single = [complete(seed=21 + i, **kw) for i in range(3)]
many = client.completions.create(model="glm", n=3, seed=21, **kw)
assert [c.index for c in many.choices] == [0, 1, 2], many
assert [c.text for c in many.choices] == [r.choices[0].text for r in single], (many, single)
assert many.usage.completion_tokens == sum(r.usage.completion_tokens for r in single), many.usage
assert len({c.text for c in many.choices}) > 1, many  # three seeds, three samples
texts, reasons = ["", "", ""], [None, None, None]
for chunk in client.completions.create(model="glm", n=3, seed=21, stream=True, **kw):
    for c in chunk.choices:
        assert reasons[c.index] is None, f"a chunk after choice {c.index} ended"
        texts[c.index] += c.text
        reasons[c.index] = c.finish_reason
assert texts == [c.text for c in many.choices], (texts, many)
assert reasons == [c.finish_reason for c in many.choices], (reasons, many)
print(f"ok: n=3: {texts}")
# best_of = 3: the candidates are the one-choice answers with seeds 31, 32, 33; the answer is the
# one with the highest mean log-probability per token, and the usage counts all three.
kw = dict(prompt="The river", max_tokens=10, temperature=1.0, top_p=1.0)
cands = [complete(seed=31 + i, logprobs=0, **kw) for i in range(3)]
def mean(c):
    v = c.choices[0].logprobs.token_logprobs
    return sum(v) / len(v) if v else float("-inf")
best = client.completions.create(model="glm", seed=31, best_of=3, **kw)
want = cands[max(range(3), key=lambda i: mean(cands[i]))].choices[0].text
assert best.choices[0].text == want, (best, [c.choices[0].text for c in cands])
assert best.choices[0].logprobs is None, best
assert best.usage.completion_tokens == sum(c.usage.completion_tokens for c in cands), best.usage
print(f"ok: best_of=3: {want!r} of {[c.choices[0].text for c in cands]}")
try:
    client.completions.create(model="glm", prompt="a", max_tokens=4, n=2, best_of=3, stream=True)
    sys.exit("best_of=3 with n=2 was streamed")
except openai.BadRequestError as e:
    assert "best_of" in str(e), e
PY
  pass "$label: openai client, plain and streamed, n = 3"

  # A streaming client that goes away after its first event: its query is cancelled (the engine
  # drops it between two steps, freeing its cache rows) long before it would have ended, and the
  # server goes on answering. The seed is one whose plain answer runs >= 100 tokens.
  timeout 120 "$PYTHON" - "$PORT" "$LOG" <<'PY' || fail "$label: streaming client that goes away"
import json, socket, sys, time, urllib.request
port, log = int(sys.argv[1]), sys.argv[2]
def body(seed, stream):
    return json.dumps({"prompt": "The river", "max_tokens": 110, "temperature": 1.0, "top_p": 1.0,
                       "seed": seed, "stream": stream}).encode()
def plain_tokens(seed):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body(seed, False),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["usage"]["completion_tokens"]
seed = next((s for s in range(1, 40) if plain_tokens(s) >= 100), None)
assert seed is not None, "no seed in 1..39 gives an answer of >= 100 tokens"
before = open(log, errors="replace").read().count("streaming client went away")
b = body(seed, True)
s = socket.create_connection(("127.0.0.1", port), timeout=60)
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(b) + b)
got = b""
while b"data: " not in got:
    chunk = s.recv(4096)
    assert chunk, f"the stream ended before its first event: {got[:300]!r}"
    got += chunk
s.close()
deadline = time.time() + 30
while open(log, errors="replace").read().count("streaming client went away") == before:
    assert time.time() < deadline, "the server did not notice the client going away within 30 s"
    time.sleep(0.05)
assert plain_tokens(seed) >= 100  # and the server goes on answering
print(f"ok: streamed query (seed {seed}) cancelled when its client went away")
PY
  expect 200 '"status":"ok"' GET /health
  pass "$label: a streaming client that goes away: its query cancelled, the server still answers"
}

# stop_and_check LABEL PID: a query in flight when SIGTERM reaches PID is answered; exit 0 in 20 s.
stop_and_check() {
  local label=$1 pid=$2
  timeout 60 curl -s -o "$WORK/inflight.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary '{"text": "Children in the village", "sampling_strategy": "greedy", "out_seq_length": 100}' \
    "http://127.0.0.1:$PORT/generate" >"$WORK/inflight.code" &
  local curl_pid=$!
  sleep 0.3
  kill -TERM "$pid"
  local rc=0
  for ((i = 0; i < 200; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SERVER_PID" 2>/dev/null && fail "$label: still running 20 s after SIGTERM"
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  [[ $rc -eq 0 ]] || fail "$label: exit code $rc after SIGTERM"
  wait "$curl_pid" || true
  [[ $(cat "$WORK/inflight.code") == 200 ]] ||
    fail "$label: the query in flight at SIGTERM got $(cat "$WORK/inflight.code"): $(cat "$WORK/inflight.out")"
  grep -q 'glmrt serve: stopped' "$LOG" || fail "$label: no 'stopped' line"
  pass "$label: SIGTERM: the query in flight answered, exit 0"
}

if [[ $WHICH == single || $WHICH == all ]]; then
  start_server single
  checks single
  stop_and_check single "$SERVER_PID"
fi
if [[ $WHICH == mpi || $WHICH == all ]]; then
  start_server mpi mpiexec -n 4 --oversubscribe -- --tensor 2 --pipeline 2
  checks mpi
  pid=$(rank0_pid)
  [[ -n $pid ]] || fail "mpi: cannot find world rank 0 among mpiexec's children"
  stop_and_check mpi "$pid"
fi
if [[ $WHICH == replicas || $WHICH == all ]]; then
  # Two data-parallel replicas behind rank 0's endpoint: the same checks (requests one at a time
  # alternate between the replicas, so streaming, n, best_of and the client that goes away are
  # served by both), then every replica has answered its share.
  start_server replicas mpiexec -n 2 --oversubscribe -- --data 2
  checks replicas
  pid=$(rank0_pid)
  [[ -n $pid ]] || fail "replicas: cannot find world rank 0 among mpiexec's children"
  stop_and_check replicas "$pid"
  counts=$(grep -o 'queries answered per replica: [0-9]*, [0-9]*' "$LOG" | sed 's/.*: //') ||
    fail "replicas: no 'queries answered per replica' line in the log"
  [[ ${counts%%,*} -ge 30 && ${counts##*, } -ge 30 ]] ||
    fail "replicas: the queries were not shared out: answered per replica $counts"
  pass "replicas: two replicas behind one endpoint answered $counts queries"
fi
if [[ $WHICH == quantized || $WHICH == all ]]; then
  "$GLMRT" quantize --config "$WORK/serve.yaml" --weights "$WORK/weights.safetensors" --to "$WORK/q8" \
    --quantization-bit-width 8 --tensor 2 --pipeline 1 >"$WORK/quantize.log" 2>&1 ||
    fail "glmrt quantize: $(tail -n 5 "$WORK/quantize.log")"
  # The first greedy token's log-probability from the CLI, quantizing at load (8) and not (0).
  for bits in 8 0; do
    timeout 120 mpiexec -n 2 --oversubscribe "$GLMRT" generate --config "$WORK/serve.yaml" \
      --weights "$WORK/weights.safetensors" --quantization-bit-width $bits --tensor 2 --prompt-ids 10,20,30,40 \
      --strategy greedy --out-seq-length 16 --logprobs 1 --json --output "$WORK/cli-$bits.json" >/dev/null 2>&1 ||
      fail "glmrt generate --quantization-bit-width $bits on 2 ranks failed"
  done
  first_logprob='import json, sys; print(repr(json.loads(open(sys.argv[1]).readline())["logprobs"][0][1]))'
  want=$("$PYTHON" -c "$first_logprob" "$WORK/cli-8.json")
  unquantized=$("$PYTHON" -c "$first_logprob" "$WORK/cli-0.json")
  [[ $want != "$unquantized" ]] || fail "quantized: INT8 and full precision give the same log-probability $want"
  SOURCE=(--load "$WORK/q8")
  start_server quantized mpiexec -n 2 --oversubscribe -- --tensor 2
  grep -q 'linear weights quantized to 8 bits, read pre-quantized from the checkpoint' "$LOG" ||
    fail "quantized: the server did not report reading pre-quantized weights"
  expect 200 '"token_logprobs"' POST /v1/completions \
    '{"model": "glm", "prompt": [10, 20, 30, 40], "max_tokens": 2, "temperature": 0, "logprobs": 1}'
  got=$("$PYTHON" -c 'import json, sys; print(repr(json.loads(sys.argv[1])["choices"][0]["logprobs"]["token_logprobs"][0]))' "$BODY")
  [[ $got == "$want" ]] || fail "quantized: the server gave log-probability $got, generate quantizing at load $want (unquantized $unquantized)"
  stop_server
  pass "quantized: a server on a pre-quantized checkpoint: log-probability $got, as quantizing at load (unquantized $unquantized)"
fi
if [[ $WHICH == all ]]; then
  cmp -s "$WORK/answers-single.json" "$WORK/answers-mpi.json" ||
    fail "greedy answers on 4 ranks differ from 1 rank: $(cat "$WORK/answers-single.json") vs $(cat "$WORK/answers-mpi.json")"
  pass "greedy answers on tensor 2 × pipeline 2 equal the single rank's"
  cmp -s "$WORK/answers-single.json" "$WORK/answers-replicas.json" ||
    fail "answers of two replicas differ from one rank: $(cat "$WORK/answers-single.json") vs $(cat "$WORK/answers-replicas.json")"
  pass "the answers of two data-parallel replicas equal the single rank's"
fi
echo "PASS: glmrt serve end to end ($WHICH)"
