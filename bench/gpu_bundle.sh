#!/usr/bin/env bash
# What bench/gpu_session.sh installs on a GPU machine whose image lacks this project's packages and has no network:
# Python 3.12 x86-64 wheels in .whl/ and the EGL loaders (Debian packages) in .gl/, both ignored by git. Metaworld's
# wheel is rebuilt without the textures no scene file names (37 -> 13 MB), so the bundle and the working tree fit a
# 64 MiB transfer; robosuite's likewise keeps only the meshes and textures the Can and Square scenes load (152 ->
# 14 MB).  Usage: make gpu-bundle   (or bash bench/gpu_bundle.sh)
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl .gl
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl \
    mujoco==3.3.0 metaworld==3.1.1 gymnasium==1.4.0 farama-notifications zarr==3.1.6 numcodecs==0.16.6 donfig \
    crc32c google-crc32c==1.9.0 hydra-core==1.3.8 omegaconf==2.3.1 diffusers==0.35.2 glfw==2.11.0 PyOpenGL==3.1.10 robosuite==1.5.1 \
    termcolor==3.3.0
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only: a pure-Python wheel built here

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
repack() {  # repack NAME VERSION: the wheel unpacked in $work, files removed, its RECORD cut to match, zipped back
    "$PY" - "$work" "$1-$2.dist-info/RECORD" <<'PY'
import csv, os, sys
os.chdir(sys.argv[1])
record = sys.argv[2]
rows = [r for r in csv.reader(open(record)) if r and (r[0] == record or os.path.exists(r[0]))]
with open(record, "w", newline="") as f:
    csv.writer(f).writerows(rows)
PY
    rm "$wheel" && (cd "$work" && zip -q -r -9 "$OLDPWD/$wheel" "$1" "$1-$2.dist-info")
}
wheel=$(ls .whl/metaworld-3.1.1-*.whl)
(cd "$work" && unzip -q "$OLDPWD/$wheel")
for dir in "$work"/metaworld/assets/textures "$work"/metaworld/assets/scene/textures; do
    for f in "$dir"/*; do
        grep -rqs --include=*.xml "$(basename "$f")" "$work/metaworld/assets" || rm "$f"
    done
done
repack metaworld 3.1.1

wheel=$(ls .whl/robosuite-1.5.1-*.whl)
rm -rf "$work"/*; (cd "$work" && unzip -q "$OLDPWD/$wheel")
# the asset files (meshes, textures) that the Can and Square scenes name, read from their built MJCF here
MUJOCO_GL=egl "$PY" - "$work" <<'PY'
import os, re, sys
import robosuite
from vmp.sim import load_task_cfg, make
root = os.path.dirname(robosuite.__file__)
used = set()
for task in ("can_image", "square_image"):
    env = make(load_task_cfg(task))
    env.reset(seed=0)
    xml = env.unwrapped.rs_env.model.get_xml()
    used |= {os.path.relpath(os.path.normpath(f), root) for f in re.findall(r'file="([^"]+)"', xml)}
    env.close()
assets = os.path.join(sys.argv[1], "robosuite", "models", "assets")
for dirpath, _, names in os.walk(assets):
    for name in names:
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, os.path.join(sys.argv[1], "robosuite"))
        if not name.endswith(".xml") and rel not in used:
            os.remove(path)
PY
repack robosuite 1.5.1

apt_opts="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$work/lists"
mkdir -p "$work/lists/partial"
# shellcheck disable=SC2086
apt-get $apt_opts update -qq && (cd .gl && apt-get $apt_opts download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 \
    libglx0 libgles2 2>/dev/null)
du -sh .whl .gl
