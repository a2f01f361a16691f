#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one script to run on a GPU machine (H100/H200), from the repository root (~4 minutes):
#
#   OUT=gpu_out [QUICK=1] bash bench/gpu_check.sh
#
# (0) env: nvidia-smi -L, torch and CUDA versions, tools
# (1) build: pip install of the working tree with YRCACHE_CUDA=on for sm_90 (no network), then the
#     built yrcache/_C*.so is copied into the working tree (the tests and the bench import it)
# (2) tests: pytest -m cuda
# (3) bench: python -m yrcache.bench.gpu_bench all (copy, file, overlap, serve)
# (4) summary: test counts and each phase's headline numbers, printed last
#
# A device machine returns at most 8 files from $OUT, so full logs live in $LOGS (outside $OUT)
# and are re-packed into $OUT/logs.tar.gz at the end of every step. $OUT holds at the end:
# summary.txt, logs.tar.gz (env.txt build.log build_summary.txt tests.log tests.xml),
# bench.log, copy.json, file.json, overlap.json, serve.json, and cufile.log if cuFile wrote one.
# While the steps run, env.txt is there too.
#
# Knobs: QUICK=1 (bench --quick), PYTHON (python3), BENCH_TIMEOUT (120 s), TEST_TIMEOUT (90 s),
# BENCH_DIR (/tmp: the file system the file and serve phases write to), LOGS (/tmp/gpu_check_logs),
# DEBS (.debs: optional .deb files to unpack for the build, see below),
# STEPS (default "env build tests bench summary": e.g. STEPS=summary reprints the summary).
# Exit status: 1 build failed, 2 bench failed (or timed out), 3 tests failed, else 0.
set -u

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
LOGS=${LOGS:-/tmp/gpu_check_logs}
mkdir -p "$LOGS" || exit 1
PY=${PYTHON:-python3}
STEPS=${STEPS:-env build tests bench summary}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
TEST_TIMEOUT=${TEST_TIMEOUT:-90}
export CUFILE_LOGFILE_PATH="$OUT/cufile.log"
export PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
# nvcc: CMake's check_language(CUDA) needs it on PATH (or CUDACXX)
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/cuda/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi

# optional: Debian packages carried in $DEBS (default .debs/ in the repo; e.g. libxxhash-dev and
# libxxhash0, which CMake requires, or liburing-dev and liburing2, fetched elsewhere with
# `apt-get download`), unpacked for CMake (CMAKE_PREFIX_PATH) and the loader (LD_LIBRARY_PATH)
DEBS=${DEBS:-$REPO/.debs}
if ls "$DEBS"/*.deb >/dev/null 2>&1; then
  DEBROOT=/tmp/gpu_check_debroot
  mkdir -p "$DEBROOT"
  for f in "$DEBS"/*.deb; do dpkg -x "$f" "$DEBROOT" || echo "dpkg -x $f failed"; done
  export CMAKE_PREFIX_PATH="$DEBROOT/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$DEBROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu_check: unpacked $(ls "$DEBS"/*.deb | wc -l) .deb files from $DEBS into $DEBROOT"
fi

T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
has_step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
begin() { echo; echo "==> [$(now)s] $*"; STEP_T0=$(date +%s); }
took() { echo "    $1: rc=$2, $(( $(date +%s) - STEP_T0 ))s (at $(now)s)"; }
pack() {  # the full logs so far -> $OUT/logs.tar.gz (replaced atomically)
  tar -czf "$OUT/.logs.tar.gz.part" -C "$LOGS" . 2>/dev/null && mv -f "$OUT/.logs.tar.gz.part" "$OUT/logs.tar.gz"
}
echo "gpu_check: repo $REPO, OUT $OUT, logs $LOGS, steps: $STEPS"

# --- (0) env ------------------------------------------------------------------------------------
if has_step env; then
  begin "0 env"
  rm -f "$LOGS"/*   # a fresh run: no logs of an earlier one in logs.tar.gz
  {
    echo "# gpu_check $(date -Is 2>/dev/null || date)"
    nvidia-smi -L
    $PY -c 'import torch;print(torch.__version__, torch.version.cuda)'
    echo "# python: $(command -v "$PY") $($PY -V 2>&1)"
    echo "# nvcc: $(command -v nvcc || echo 'not found')"; nvcc --version 2>/dev/null | tail -n 2
    echo "# cmake: $(cmake --version 2>/dev/null | head -n 1)  ninja: $(ninja --version 2>/dev/null)"
    $PY -c 'import transformers; print("# transformers", transformers.__version__)' 2>&1 | tail -n 1
    $PY -c 'import pybind11; print("# pybind11", pybind11.__version__)' 2>&1 | tail -n 1
    echo "# kernel $(uname -r), $(nproc) cpus, $(free -g 2>/dev/null | awk '/^Mem:/{print $2" GiB RAM"}')"
    for h in liburing.h xxhash.h; do
      found=$(ls /usr/include/$h ${DEBROOT:+$DEBROOT/usr/include/$h} 2>/dev/null | tr '\n' ' ')
      echo "# $h: ${found:-missing}"
    done
    echo "# fio: $(command -v fio || echo missing)"
    echo "# nvidia-cufile: $($PY -m pip show nvidia-cufile 2>/dev/null | awk '/^Version:/{print $2}')"
    df -h /tmp "$REPO" 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>/dev/null
  } > "$LOGS/env.txt" 2>&1
  cp -f "$LOGS/env.txt" "$OUT/env.txt"
  cat "$LOGS/env.txt"
  pack
  took env 0
fi

# --- (1) build ----------------------------------------------------------------------------------
BUILD_RC=skipped
if has_step build; then
  begin "1 build (YRCACHE_CUDA=on YRCACHE_CUDA_ARCHS=90 pip install --no-build-isolation --no-deps .)"
  YRCACHE_CUDA=on YRCACHE_CUDA_ARCHS=90 $PY -m pip install --no-build-isolation --no-deps \
    --no-index -v . > "$LOGS/build.log" 2>&1
  BUILD_RC=$?
  grep -E 'yrcache build summary|io_uring backend|psync backend|CUDA {4,}|cuFile \(GDS\)|checksums {4,}' \
    "$LOGS/build.log" | sed -e 's/^[[:space:]]*//' > "$LOGS/build_summary.txt"
  if [ "$BUILD_RC" -eq 0 ]; then
    # pip installed into site-packages; the tests (rootdir on sys.path) and `python -m` from here
    # import the working tree's package, so put the built extension next to its sources
    SO=$(cd / && env -u PYTHONPATH $PY -c 'import yrcache._C as m; print(m.__file__)' 2>>"$LOGS/build.log")
    if [ -n "$SO" ] && [ -f "$SO" ]; then
      cp -f "$SO" "$REPO/yrcache/" && echo "copied $SO -> yrcache/" >> "$LOGS/build_summary.txt"
    else
      echo "could not locate the installed yrcache._C" >> "$LOGS/build_summary.txt"
      BUILD_RC=97
    fi
    $PY -c 'import json, yrcache; i = yrcache.build_info(); print("build_info cuda:", json.dumps(i.get("cuda"))); print("backends:", i.get("backends"), "io_uring:", i.get("io_uring"))' \
      >> "$LOGS/build_summary.txt" 2>&1
  fi
  cat "$LOGS/build_summary.txt"
  { echo "# build rc=$BUILD_RC"; cat "$LOGS/build_summary.txt"; } >> "$OUT/env.txt"
  pack
  took build "$BUILD_RC"
  if [ "$BUILD_RC" -ne 0 ]; then
    echo "---- build FAILED (rc=$BUILD_RC); tail of build.log:"
    tail -n 60 "$LOGS/build.log"
    exit 1
  fi
fi

# --- (2) tests ----------------------------------------------------------------------------------
TEST_RC=skipped
if has_step tests; then
  TEST_RC=0
  : > "$LOGS/tests.log"
  begin "2 tests (pytest -m cuda)"
  # a GPU that yrcache cannot use (e.g. the static CUDA runtime is newer than the driver) would
  # make every cuda test skip and the run look green: fail instead
  if nvidia-smi -L >/dev/null 2>&1 && ! $PY -c 'import sys; from yrcache import cuda; ok, why = cuda.status(); print("yrcache cuda:", ok, why); sys.exit(0 if ok else 1)' >> "$LOGS/tests.log" 2>&1; then
    echo "nvidia-smi sees a GPU but yrcache cannot use it:"; tail -n 1 "$LOGS/tests.log"
    TEST_RC=4
  fi
  timeout -k 10 "$TEST_TIMEOUT" $PY -m pytest -q -m cuda tests/ -x --timeout=120 -p no:cacheprovider \
    --junitxml="$LOGS/tests.xml" >> "$LOGS/tests.log" 2>&1
  RC=$?
  [ "$TEST_RC" = 4 ] || TEST_RC=$RC
  tail -n 25 "$LOGS/tests.log"
  { echo "# tests rc=$TEST_RC"; tail -n 3 "$LOGS/tests.log"; } >> "$OUT/env.txt"
  pack
  took tests "$TEST_RC"
fi

# --- (3) bench ----------------------------------------------------------------------------------
BENCH_RC=skipped
if has_step bench; then
  QARG=()
  if [ "${QUICK:-0}" = 1 ]; then QARG=(--quick); fi
  begin "3 bench (gpu_bench all${QARG[*]+ ${QARG[*]}}, timeout ${BENCH_TIMEOUT}s)"
  timeout -k 10 "$BENCH_TIMEOUT" $PY -m yrcache.bench.gpu_bench all --out "$OUT" \
    --dir "${BENCH_DIR:-/tmp}" --budget $(( BENCH_TIMEOUT - 20 )) ${QARG[@]+"${QARG[@]}"} 2>&1 \
    | tee "$OUT/bench.log"
  BENCH_RC=${PIPESTATUS[0]}
  took bench "$BENCH_RC"
fi

# --- (4) summary --------------------------------------------------------------------------------
if has_step summary; then
  STEP_T0=$(date +%s)
  BUILD_RC=$BUILD_RC TEST_RC=$TEST_RC BENCH_RC=$BENCH_RC TOTAL_S=$(now) \
    $PY - "$OUT" "$LOGS" > "$OUT/summary.txt" 2>&1 <<'PYEOF'
import json, os, re, sys, textwrap

out, logs = sys.argv[1], sys.argv[2]


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


lines = ["=" * 30 + " gpu_check summary " + "=" * 30]
env = [l for l in read(os.path.join(logs, "env.txt")).splitlines() if l.strip()]
lines += ["  " + l for l in env[:3]]
lines.append(f"steps: build rc={os.environ.get('BUILD_RC')}  tests rc={os.environ.get('TEST_RC')}  "
             f"bench rc={os.environ.get('BENCH_RC')}  total {os.environ.get('TOTAL_S')} s")
for l in read(os.path.join(logs, "build_summary.txt")).splitlines():
    if re.search(r"io_uring backend|CUDA {4,}|build_info cuda", l):
        lines.append("  " + l.strip()[:150])
tl = read(os.path.join(logs, "tests.log")).splitlines()
last = next((l for l in reversed(tl)
             if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)|no tests ran", l)),
            "(no pytest result line)")
lines.append("tests: " + last.strip("= ").strip())
lines += ["  " + l[:150] for l in tl if l.startswith(("FAILED", "ERROR"))][:8]
for ph in ("copy", "file", "overlap", "serve"):
    try:
        with open(os.path.join(out, ph + ".json"), encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError) as e:
        lines.append(f"{ph:<8} no result ({type(e).__name__})")
        continue
    st = "ok" if d.get("ok") else ("PARTIAL" if d.get("partial") else "FAILED")
    err = f": {str(d.get('error'))[:140]}" if d.get("error") else ""
    lines.append(f"{ph:<8} {st} ({d.get('elapsed_s', '?')} s){err}")
    if ph == "copy" and d.get("env"):
        e = d["env"]
        lines.insert(1, f"  card: {e.get('card')}  torch {e.get('torch')} CUDA {e.get('torch_cuda')}")
    kv = "  ".join(f"{k}={v}" for k, v in (d.get("headline") or {}).items())
    lines += textwrap.wrap(kv, 110, initial_indent="    ", subsequent_indent="    ")
    for n in (d.get("notes") or [])[:4]:
        lines.append(f"    note: {n[:140]}")
lines.append("full logs: logs.tar.gz (env.txt build.log build_summary.txt tests.log tests.xml)")
print("\n".join(lines))
PYEOF
  rm -f "$OUT/env.txt"   # it is in logs.tar.gz: keep $OUT within the 8 files that come back
  pack
  echo
  cat "$OUT/summary.txt"
  echo "    summary took $(( $(date +%s) - STEP_T0 ))s; total $(now)s"
fi
[ "$BENCH_RC" = skipped ] || [ "$BENCH_RC" -eq 0 ] || exit 2
[ "$TEST_RC" = skipped ] || [ "$TEST_RC" -eq 0 ] || exit 3
exit 0
