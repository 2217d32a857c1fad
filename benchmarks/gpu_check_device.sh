#!/usr/bin/env bash
# The GPU check's last call on the lent machine (docs/gpu.md): join the parts the earlier calls
# left in /tmp/gpu-parts, check them against the bundle's manifest, install the carried wheels
# with --target (the machine reaches no registry), then run benchmarks/gpu_check.py into $OUT.
# Usage: bash benchmarks/gpu_check_device.sh .gpu-bundle/small [extra gpu_check.py run flags]
set -uo pipefail
small=${1:?usage: gpu_check_device.sh BUNDLE/small [flags]}
shift
out=${OUT:-/tmp/gpu-check-out}
mkdir -p "$out"
exec > >(tee "$out/device.log") 2>&1
export PYTHONUNBUFFERED=1
bundle=/tmp/gpu-bundle
rm -rf "$bundle" && cp -r "$small" "$bundle" || exit 2
mkdir -p /tmp/gpu-parts
for part in "$(dirname "$small")"/parts/p*/part; do  # a part carried with this call (the last one, when it fits)
  [ -f "$part" ] && cp "$part" "/tmp/gpu-parts/$(basename "$(dirname "$part")")"
done
echo "[device] $(date -u +%FT%TZ) parts present: $(ls /tmp/gpu-parts 2>/dev/null | tr '\n' ' ')"
python3 - "$bundle/manifest.json" <<'PY' || exit 3
import hashlib, json, pathlib, sys
manifest = json.loads(pathlib.Path(sys.argv[1]).read_text())
missing = []
with open("/tmp/gpu-stream.tar", "wb") as out:
    for part in manifest["parts"]:
        path = pathlib.Path("/tmp/gpu-parts") / pathlib.Path(part["path"]).parent.name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != part["sha256"]:
            missing.append(part["path"])
            continue
        out.write(path.read_bytes())
if missing:
    sys.exit(f"[device] parts missing or damaged: {missing}; carry them again (the machine went back between calls?)")
digest = hashlib.sha256(pathlib.Path("/tmp/gpu-stream.tar").read_bytes()).hexdigest()
if digest != manifest["stream_sha256"]:
    sys.exit(f"[device] joined stream sha256 {digest} != {manifest['stream_sha256']}")
print("[device] parts joined and verified")
PY
mkdir -p /tmp/gpu-stream && tar -xf /tmp/gpu-stream.tar -C /tmp/gpu-stream || exit 4
mkdir -p "$bundle/corpus" "$bundle/models"
for f in /tmp/gpu-stream/*.onnx; do
  case "$(basename "$f")" in minilm-*) mv "$f" "$bundle/models/" ;; *) mv "$f" "$bundle/corpus/" ;; esac
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$bundle"/wheels/*.whl /tmp/gpu-stream/*.whl || exit 5
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# CUDA and cuDNN from the image's nvidia-* packages, for ONNX Runtime in the server's process too
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c 'import onnxruntime as o; print("[device] onnxruntime", o.__version__, o.__file__, o.get_available_providers())'
timeout 500 python3 benchmarks/gpu_check.py run --bundle "$bundle" --out "$out" "$@"
rc=$?
cp "$out"/work/server.log "$out"/work/optimize-*.log "$out"/ 2>/dev/null
echo "[device] gpu_check exited $rc"
exit $rc
