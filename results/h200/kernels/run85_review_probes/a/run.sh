timeout 60 python3 - > $OUT/probe.txt 2>&1 <<'PY'
import os, signal, ctypes, time
libc = ctypes.CDLL(None)
def act():
    b = ctypes.create_string_buffer(256); libc.sigaction(15, None, b)
    return hex(int.from_bytes(b.raw[:8], 'little'))
def h(s, f): raise KeyboardInterrupt
signal.signal(signal.SIGTERM, h); print('installed', act(), flush=True)
import torch; torch.zeros(1, device='cuda'); print('cuda', act(), flush=True)
import pynvml; pynvml.nvmlInit(); print('nvml', act(), flush=True)
from torch.profiler import profile, ProfilerActivity
for i in range(2):
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        torch.ones(10, device='cuda').sum(); torch.cuda.synchronize()
    len(p.events()); print('profiler', i, act(), flush=True)
import triton, triton.language as tl
@triton.jit
def k(x): tl.store(x, 1.0)
k[(1,)](torch.zeros(1, device='cuda')); print('triton', act(), flush=True)
try:
    os.kill(os.getpid(), signal.SIGTERM); time.sleep(2); print('no KI', flush=True)
except KeyboardInterrupt: print('KI ok', flush=True)
PY
echo "probe rc=$?"; cat $OUT/probe.txt | grep -v Warn
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 70 python3 benchmarks/gpu/kernels_bench.py --out $OUT/kb --shapes mixtral-8x7b --sections tune --tokens 4096 --tune-weights int4 --tune-by energy --tune-window 1.5 --tune-candidates w64t16fpx,w128t128fpx,w64t128fpx > $OUT/kb_log.txt 2>&1
echo "kb rc=$?"; tail -5 $OUT/kb_log.txt; ls -la $OUT/kb
