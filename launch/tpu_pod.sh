#!/usr/bin/env bash
# Train on a Cloud TPU pod slice, run from a workstation with gcloud:
#   1. create the TPU VM slice        (skip: --no-create, when it exists)
#   2. put the repo on every worker   (scp of a clean copy of this checkout, or git clone $REPO_URL)
#   3. install it there: `make setup` (+ the jax[tpu] wheel matching the installed jax)
#   4. run the same command on every worker:
#        .venv/bin/python -m cxrclip_jax.main --config=... --workdir=... --distributed=true [flags]
#      (jax.distributed.initialize() finds the other hosts from the TPU environment).
# Steps 2-4 use --worker=all. --dry-run prints the commands, one a line, exactly as they would run
# (each line is shell: `eval` of that line is what the launcher does), and runs nothing.
#
#   launch/tpu_pod.sh [options] TPU_NAME ZONE WORKDIR [main.py flags...]
#   e.g. launch/tpu_pod.sh --dry-run --accelerator-type=v5p-64 my-v5p-64 us-east5-a /mnt/shared/llm2clip_mimic \
#          --config.data.dirs=/mnt/shared/prepared/mimic_cxr --config.text.model_dir=/mnt/shared/LLM2VEC4CXR
#
# Options (each also from the environment; a flag wins over the variable):
#   --name=N / TPU_POD_NAME, --zone=Z / TPU_POD_ZONE, --workdir=D / WORKDIR   instead of the positionals
#   --accelerator-type=T / TPU_POD_ACCELERATOR_TYPE   e.g. v4-32, v5litepod-16, v5p-64, v6e-16 (to create)
#   --version=V / TPU_POD_RUNTIME_VERSION   TPU software version; default from the type: v4 and older
#                      tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --project=P / TPU_POD_PROJECT           else gcloud's configured project
#   --config=F / CONFIG                     default configs/llm2clip.py:mimic
#   REPO_URL, REPO_REF (default origin/HEAD)  clone this URL on the workers instead of copying the checkout
#   REMOTE_DIR                              where the repo lives on the workers, relative to the home
#                                           directory or absolute (default cxrclip_jax)
#   TPU_POD_CREATE_FLAGS                    more `tpu-vm create` flags, split on spaces (e.g. --spot)
#   --no-create, --no-copy, --no-setup      skip a step (a re-run on a slice that is set up)
#   --dry-run, -h/--help
# Launcher options are recognized anywhere before `--`; everything else after the positionals, and
# everything after `--`, goes to main.py, each word quoted for the remote shell with printf %q.
#
# The copy (no REPO_URL) is `git archive` of this checkout as it is on disk, every file that git
# does not ignore (uncommitted and untracked ones too; not .venv/ or runs/), staged through a scratch
# index. It lands on top of REMOTE_DIR: files deleted here stay there, the workers' .venv is kept.
#
# Paths: WORKDIR, data dirs and model dirs are opened with pathlib/open on every host, so they must
# be paths on a filesystem every host sees (a shared persistent disk / Filestore NFS mount, or a
# gcsfuse mount of a bucket), absolute or relative to REMOTE_DIR. gs:// URLs do NOT work yet: the
# training loop and Orbax checkpoints go through etils.epath, but the prepared data, text caches
# and exports still use local paths (routing them through epath too is planned).
#
# The run step lasts as long as training and its output streams here; run the launcher under tmux
# or nohup so that a dropped connection does not stop it.
set -euo pipefail

USAGE="usage: launch/tpu_pod.sh [--dry-run] [--no-create] [--accelerator-type=T] [--version=V] [--config=F] TPU_NAME ZONE WORKDIR [main.py flags...] (--help for more)"
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

DRY=0 CREATE=1 COPY=1 SETUP=1
NAME=${TPU_POD_NAME:-} ZONE=${TPU_POD_ZONE:-} WORK=${WORKDIR:-}
NAME_FLAG= ZONE_FLAG= WORK_FLAG=
TYPE=${TPU_POD_ACCELERATOR_TYPE:-} VERSION=${TPU_POD_RUNTIME_VERSION:-} PROJECT=${TPU_POD_PROJECT:-}
CONFIG=${CONFIG:-configs/llm2clip.py:mimic}
POSITIONAL=() EXTRA=() in_extra=0
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --no-create) CREATE=0 ;;
    --no-copy) COPY=0 ;;
    --no-setup) SETUP=0 ;;
    --name=*) NAME_FLAG=${1#*=} ;;
    --zone=*) ZONE_FLAG=${1#*=} ;;
    --workdir=*) WORK_FLAG=${1#*=} ;;
    --accelerator-type=*) TYPE=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    -*) EXTRA+=("$1"); in_extra=1 ;;  # main.py's flags start here
    *) if ((in_extra)); then EXTRA+=("$1"); else POSITIONAL+=("$1"); fi ;;
  esac
  shift
done
# Flags first, then the positionals in order for what is still missing, then the environment.
take() { if [[ -n $1 ]]; then printf '%s' "$1"; elif ((${#POSITIONAL[@]})); then printf '%s' "${POSITIONAL[0]}"; return 1; else printf '%s' "$2"; fi; }
NAME=$(take "$NAME_FLAG" "$NAME") || POSITIONAL=("${POSITIONAL[@]:1}")
ZONE=$(take "$ZONE_FLAG" "$ZONE") || POSITIONAL=("${POSITIONAL[@]:1}")
WORK=$(take "$WORK_FLAG" "$WORK") || POSITIONAL=("${POSITIONAL[@]:1}")
((${#POSITIONAL[@]} == 0)) || die "unexpected argument: ${POSITIONAL[0]}"
[[ -n $NAME && -n $ZONE && -n $WORK ]] || { echo "$USAGE" >&2; exit 2; }
[[ $WORK != gs://* ]] || die "WORKDIR must be a shared filesystem path, not a gs:// URL (see --help)"

if ((CREATE)); then
  [[ -n $TYPE ]] || die "--accelerator-type (or TPU_POD_ACCELERATOR_TYPE) is needed to create $NAME; --no-create if it exists"
  if [[ -z $VERSION ]]; then
    case $TYPE in
      v6e-*) VERSION=v2-alpha-tpuv6e ;;
      v5p-*) VERSION=v2-alpha-tpuv5 ;;
      v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
      v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
      *) die "no default --version for accelerator type $TYPE; pass --version" ;;
    esac
  fi
fi
REMOTE_DIR=${REMOTE_DIR:-cxrclip_jax}
[[ $REMOTE_DIR != "~"* ]] || die "REMOTE_DIR: give it relative to the home directory (no ~)"
LOCAL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# One shell word: as it is when that is safe, else single-quoted.
q() {
  local safe='^[A-Za-z0-9_@%+=:,./-]+$'
  [[ $1 =~ $safe ]] && { printf '%s' "$1"; return; }
  local s=$1 out=''
  while [[ $s == *"'"* ]]; do out+="${s%%"'"*}'\\''"; s=${s#*"'"}; done
  printf "'%s'" "$out$s"
}
cmdline() {  # words -> one command line (an --option=value word gets only its value quoted)
  local out='' w opt='^(--[A-Za-z0-9_.-]+=)(.*)$'
  for w; do
    if [[ $w =~ $opt ]]; then w=${BASH_REMATCH[1]}$(q "${BASH_REMATCH[2]}"); else w=$(q "$w"); fi
    out+="${out:+ }$w"
  done
  printf '%s' "$out"
}
run() {  # $1: one shell command line
  if ((DRY)); then printf '%s\n' "$1"; else printf '+ %s\n' "$1" >&2; eval "$1"; fi
}
((DRY)) || command -v gcloud >/dev/null || die "gcloud not found (install the Google Cloud CLI)"

GC=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -z $PROJECT ]] || COMMON+=(--project="$PROJECT")
on_all() { run "$(cmdline "${GC[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command="$1")"; }
rdir=$(printf %q "$REMOTE_DIR")

if ((CREATE)); then
  read -r -a create_flags <<< "${TPU_POD_CREATE_FLAGS:-}"
  run "$(cmdline "${GC[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type="$TYPE" --version="$VERSION" \
         ${create_flags[@]+"${create_flags[@]}"})"
fi

if ((COPY)); then
  if [[ -n ${REPO_URL:-} ]]; then
    on_all "{ [ -d $rdir/.git ] || git clone $(printf %q "$REPO_URL") $rdir; } && cd $rdir && git fetch --quiet origin && git checkout --quiet $(printf %q "${REPO_REF:-origin/HEAD}")"
  else
    git -C "$LOCAL_REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
      die "$LOCAL_REPO is not a git checkout; set REPO_URL to clone the repo on the workers instead"
    stage=${TMPDIR:-/tmp}/tpu_pod-$NAME/$(basename "$REMOTE_DIR")
    # A scratch index holding every file git does not ignore; the checkout's own index is untouched.
    idx=$(q "$(dirname "$stage")/index") repo=$(q "$LOCAL_REPO")
    run "rm -rf $(q "$(dirname "$stage")") && mkdir -p $(q "$stage") && GIT_INDEX_FILE=$idx git -C $repo add -A && git -C $repo archive --format=tar \"\$(GIT_INDEX_FILE=$idx git -C $repo write-tree)\" | tar -x -C $(q "$stage")"
    run "$(cmdline "${GC[@]}" scp --recurse "$stage" "$NAME:$(dirname "$REMOTE_DIR")" "${COMMON[@]}" --worker=all)"
  fi
fi

if ((SETUP)); then
  # TPU images may lack python3-venv or make; jax[tpu] adds libtpu for the jax `make setup` installed.
  on_all "cd $rdir && { python3 -m ensurepip --version >/dev/null 2>&1 && command -v make >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv make; }; } && make setup && .venv/bin/python -m pip install --quiet \"jax[tpu]==\$(.venv/bin/python -c \"import jax; print(jax.__version__)\")\""
fi

main_args=$(printf ' %q' --config="$CONFIG" --workdir="$WORK" --distributed=true ${EXTRA[@]+"${EXTRA[@]}"})
on_all "cd $rdir && .venv/bin/python -m cxrclip_jax.main$main_args"
