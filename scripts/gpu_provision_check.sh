#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU (no network needed): the gpu role's detection and
# validation (playbooks/gpu-validate.yml) against localhost. Needs a folder of wheels for
# ansible-core and nvidia-ml-py (WHEELS, default ./gpu-wheels). Writes the log to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-gpu-wheels}
OUT=${OUT:-/tmp/pai-gpu-check}
mkdir -p "$OUT"
python3 --version
nvidia-smi -L
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-index --find-links "$WHEELS" ansible-core nvidia-ml-py
cat > "$OUT/hosts.ini" <<INI
[pai_nodes]
localhost ansible_connection=local ansible_python_interpreter=$venv/bin/python pai_current=$venv
INI
ANSIBLE_CONFIG=playbooks/ansible.cfg ANSIBLE_ROLES_PATH=playbooks/roles \
  "$venv/bin/ansible-playbook" -i "$OUT/hosts.ini" playbooks/gpu-validate.yml -v | tee "$OUT/gpu-validate.log"
