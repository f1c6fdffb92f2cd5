# Sourced (from the repository root) by the benches that run against the lab: starts the lab when
# it is not running, exports its env and KUBECONFIG. The bench calls `lab_down` in its EXIT trap,
# which stops the lab again only if it was started here.
LAB_DIR="${KIRT_LAB_DIR:-$PWD/.lab}"
lab_started_here=0
if [[ ! -f "$LAB_DIR/env" ]]; then
  bash tests/lab/lab.sh up >&2
  lab_started_here=1
fi
set -a; source "$LAB_DIR/env"; set +a
export KUBECONFIG="$KIRT_LAB_KUBECONFIG"
lab_down() { if ((lab_started_here)); then bash tests/lab/lab.sh down >&2; fi; }
