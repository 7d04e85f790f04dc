# Source at the start of every device call:  . scripts/device/setup.sh
# Installs the carried wheels (.whl/, e.g. hydra, omegaconf: the device image has torch but no hydra)
# into /tmp/site, sets PYTHONPATH, PYTHONUNBUFFERED=1 and LRA_CACHE_DIR=/tmp/cache, and prints the
# GPU, torch and CUDA. Never exits the calling shell: missing wheels or nvidia-smi are reported and skipped.
# Idempotent (LRA_SETUP_DONE). Exports LRA_REPO (repository root) and LRA_DEVICE_SLUG (e.g.
# nvidia-h100-80gb, nvidia-h200, cpu: the results/<device>/ folder name).
if [ -z "${LRA_SETUP_DONE:-}" ]; then
    LRA_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    export LRA_REPO
    _lra_site="${LRA_SITE:-/tmp/site}"
    if ls "$LRA_REPO"/.whl/*.whl >/dev/null 2>&1; then
        # installed already in this machine's life (a later step of the same call): skip
        if [ "$(cat "$_lra_site/.lra-wheels" 2>/dev/null)" = "$(ls "$LRA_REPO"/.whl/)" ]; then
            echo "[setup] carried wheels already in $_lra_site"
        elif PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$_lra_site" "$LRA_REPO"/.whl/*.whl; then
            echo "[setup] installed $(ls "$LRA_REPO"/.whl/*.whl | wc -l) carried wheels into $_lra_site"
            ls "$LRA_REPO"/.whl/ >"$_lra_site/.lra-wheels"
        else
            echo "[setup] WARNING: installing the carried wheels failed; going on with what is installed"
        fi
        export PYTHONPATH="$_lra_site:$LRA_REPO${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "[setup] no wheels in $LRA_REPO/.whl (not carried?): using the installed packages"
        export PYTHONPATH="$LRA_REPO${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    export LRA_CACHE_DIR="${LRA_CACHE_DIR:-/tmp/cache}"
    if [ -z "${LRA_GIT_COMMIT:-}" ] && command -v git >/dev/null 2>&1 && git -C "$LRA_REPO" rev-parse HEAD >/dev/null 2>&1; then
        :   # lra.results asks git itself
    elif [ -z "${LRA_GIT_COMMIT:-}" ]; then
        echo "[setup] no git checkout here and LRA_GIT_COMMIT unset: records will have git_commit null"
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader \
            || echo "[setup] nvidia-smi failed"
    else
        echo "[setup] no nvidia-smi: no NVIDIA GPU here"
    fi
    python3 -c "import torch; c = torch.cuda.is_available(); print('[setup] torch', torch.__version__, '| CUDA',
torch.version.cuda, '| cuDNN', torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
'| GPU:', torch.cuda.get_device_name(0) if c else 'none')" || echo "[setup] WARNING: torch is not importable"
    LRA_DEVICE_SLUG="$(python3 -c "import re, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'
print('-'.join(re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-').split('-')[:3]))" 2>/dev/null || echo unknown)"
    export LRA_DEVICE_SLUG
    echo "[setup] device slug: $LRA_DEVICE_SLUG; LRA_CACHE_DIR=$LRA_CACHE_DIR"
    python3 -c "import hydra, omegaconf; print('[setup] hydra', hydra.__version__, 'omegaconf', omegaconf.__version__)" \
        || echo "[setup] WARNING: hydra is not importable: carry .whl"
    export LRA_SETUP_DONE=1
    unset _lra_site
fi
