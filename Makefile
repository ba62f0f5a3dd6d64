# mixtral.cpp — the two commands that do everything on a fresh Debian machine:
#   make demo   install what is missing, build Release, generate text
#   make test   install what is missing, build, run every test (ctest)
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

.PHONY: all deps build test demo clean
all: build

deps:
	@bash scripts/install-deps.sh
	@bash scripts/install-node-deps.sh

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	@bash scripts/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD)
