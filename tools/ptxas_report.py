#!/usr/bin/env python3
"""Compiles CUDA C++ files with NVIDIA's NVRTC and assembles the PTX with `ptxas -v`, with no GPU
and no CUDA driver, and prints one JSON line per kernel and architecture: registers, spill stores
and loads, stack frame and static shared memory.

    ptxas_report.py DIR [--arch sm_80 --arch sm_90]

compiles every `DIR/*.cu` (the sources `pipeline`'s CubeCL kernels compile to, written by
`tests/cuda_compile.rs`) with the options CubeCL's CUDA runtime uses (`--gpu-architecture=sm_NN`,
`sm_NNa` from sm_90, `-lineinfo`, the CUDA headers on the include path). NVRTC, ptxas and the
headers come from PyPI: `pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12
nvidia-cuda-runtime-cu12` into the interpreter that runs this script.
"""
import argparse
import ctypes
import glob
import json
import os
import re
import subprocess
import sys


def nvidia_dir():
    for site in sys.path:
        d = os.path.join(site, "nvidia")
        if os.path.isdir(os.path.join(d, "cuda_nvrtc")):
            return d
    sys.exit("no nvidia/cuda_nvrtc beside this interpreter: pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12")


def one(pattern):
    hits = sorted(glob.glob(pattern))
    if not hits:
        sys.exit(f"not found: {pattern}")
    return hits[0]


class Nvrtc:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _check(self, res, what, log=""):
        if res != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(res).decode()}\n{log}")

    def version(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return f"{major.value}.{minor.value}"

    def _bytes(self, prog, size_fn, get_fn):
        size = ctypes.c_size_t()
        self._check(getattr(self.lib, size_fn)(prog, ctypes.byref(size)), size_fn)
        buf = ctypes.create_string_buffer(size.value)
        self._check(getattr(self.lib, get_fn)(prog, buf), get_fn)
        return buf.raw.rstrip(b"\0")

    def ptx(self, source, name, options):
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
            "nvrtcCreateProgram",
        )
        opts = [o.encode() for o in options]
        res = self.lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        log = self._bytes(prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").decode(errors="replace")
        self._check(res, f"NVRTC compiling {name}", log)
        ptx = self._bytes(prog, "nvrtcGetPTXSize", "nvrtcGetPTX").decode()
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return ptx


def parse(report):
    """Per entry function: regs, spill_stores, spill_loads, stack, static_smem (bytes)."""
    rows, cur = [], None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = {"function": m.group(1)}
            rows.append(cur)
        elif cur is not None:
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m:
                cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            m = re.search(r"Used (\d+) registers", line)
            if m:
                cur["regs"] = int(m.group(1))
                s = re.search(r"(\d+) bytes smem", line)
                cur["static_smem"] = int(s.group(1)) if s else 0
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--arch", action="append", default=[])
    args = ap.parse_args()
    archs = args.arch or ["sm_80", "sm_90"]
    nv = nvidia_dir()
    nvrtc = Nvrtc(one(os.path.join(nv, "cuda_nvrtc/lib/libnvrtc.so*")))
    ptxas = one(os.path.join(nv, "cuda_nvcc/bin/ptxas"))
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    includes = [p for p in [os.path.join(nv, "cuda_runtime/include"), os.path.join(nv, "cuda_cccl/include")] if os.path.isdir(p)]
    for path in sorted(glob.glob(os.path.join(args.dir, "*.cu"))):
        kernel = os.path.splitext(os.path.basename(path))[0]
        source = open(path).read()
        for arch in archs:
            target = arch + ("a" if int(re.sub(r"\D", "", arch)) >= 90 else "")
            options = [f"--gpu-architecture={target}", "-lineinfo"] + [f"--include-path={i}" for i in includes]
            ptx_path = os.path.join(args.dir, f"{kernel}.{arch}.ptx")
            with open(ptx_path, "w") as f:
                f.write(nvrtc.ptx(source, kernel + ".cu", options))
            r = subprocess.run([ptxas, "-v", f"-arch={target}", ptx_path, "-o", os.devnull], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"ptxas failed on {ptx_path}:\n{r.stdout}{r.stderr}")
            for row in parse(r.stdout + r.stderr):
                row.update(kernel=kernel, arch=arch, nvrtc=nvrtc.version(), ptxas=version)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
