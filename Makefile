# kirt — see README.md. `make demo` and `make test` are all a new machine needs.
SHELL := /bin/bash
CARGO ?= cargo
LAB := tests/lab/lab.sh
export KIRT_LAB_CACHE ?= $(HOME)/.cache/kirt-lab

PREFIX ?= /usr/local
KIRT_BIN ?= target/release/kirt

.PHONY: image all build release deps lab-deps lab-up lab-down lab-status test test-unit demo bench lint deny advisory-db fmt clean install

all: build

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release --workspace

deps lab-deps:
	bash tests/lab/deps.sh

lab-up: build
	bash $(LAB) up

lab-down:
	bash $(LAB) down

lab-status:
	bash $(LAB) status

## Everything: lab dependencies, build, lab up, unit + integration tests, lab down (also on failure).
test: lab-deps
	bash tests/lab/run-tests.sh

## Unit tests only (no lab).
test-unit:
	KIRT_SKIP_LAB=1 $(CARGO) test --workspace

demo: lab-deps
	bash tests/lab/demo.sh

bench: lab-deps
	bash benches/run.sh

lint: deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash -n tests/lab/*.sh deny/*.sh benches/*.sh .ci/run

## Supply chain, offline: advisories (vendored RustSec database), licenses, sources, duplicate majors.
deny:
	bash deny/check.sh

## Refresh deny/advisory-db (ADVISORY_DB=DIR or ADVISORY_DB=https://github.com/RustSec/advisory-db).
advisory-db:
	bash deny/update-advisory-db.sh

fmt:
	$(CARGO) fmt --all

clean:
	-bash $(LAB) down
	$(CARGO) clean

target/release/kirt:
	$(CARGO) build --release --bin kirt

## kirt, the kubectl plugin link (`kubectl kirt …`), shell completions and the man page.
install: $(KIRT_BIN)
	install -D -m 0755 $(KIRT_BIN) $(DESTDIR)$(PREFIX)/bin/kirt
	ln -sf kirt $(DESTDIR)$(PREFIX)/bin/kubectl-kirt
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d $(DESTDIR)$(PREFIX)/share/man/man1
	$(KIRT_BIN) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/kirt
	$(KIRT_BIN) completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_kirt
	$(KIRT_BIN) completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/kirt.fish
	$(KIRT_BIN) man > $(DESTDIR)$(PREFIX)/share/man/man1/kirt.1

## Container image (offline, buildah with vfs storage and chroot isolation): kirt + etcdutl.
image: $(KIRT_BIN)
	KIRT_BIN=$(KIRT_BIN) bash deploy/build-image.sh
