# Two entry points for a fresh machine (README.md): `make demo` and `make test`.
PYTHON ?= python3
export PYTHON

.PHONY: install demo test cuda-check triton-check gpu-check mutants

install:
	bash scripts/install.sh triton,train,bench,track,test

demo: install
	$(PYTHON) -m mmae_fast.train.demo

test: install
	$(PYTHON) -m pytest -q

cuda-check:  # compile every csrc/*.cu with nvcc (sm_80, sm_90a) and syntax-check the bindings
	bash scripts/check_cuda_compile.sh --bindings

triton-check: install  # compile every Triton kernel launch for sm_90 and sm_80 (no GPU needed)
	env -u TRITON_INTERPRET $(PYTHON) -W ignore -m mmae_fast.ops.tcr.triton.compile_check --arch 90
	env -u TRITON_INTERPRET $(PYTHON) -W ignore -m mmae_fast.ops.tcr.triton.compile_check --arch 80

mutants:  # plant each bug of scripts/mutants.py in a temporary copy, report which tests catch each (slow; not in CI)
	$(PYTHON) scripts/mutants.py

# On a GPU machine: build for its arch, run the whole suite, bench, profile, plot, within BUDGET s
# (scripts/gpu_check.py; results in bench/results/<device>/; EXPORT=dir also copies them there;
# GPU_CHECK_ARGS="--skip build" etc. are passed on).
# DEVICE=cpu: the CI smoke (tiny, temp dir).
DEVICE ?= cuda
BUDGET ?= 420
gpu-check:
	$(PYTHON) scripts/gpu_check.py --budget $(BUDGET) $(if $(filter cpu,$(DEVICE)),--device cpu --smoke,) $(if $(EXPORT),--export $(EXPORT),) $(GPU_CHECK_ARGS)
