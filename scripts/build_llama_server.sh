#!/usr/bin/env bash
# Build llama.cpp's llama-server once, CPU only, into a cache outside the repo.
#
# Why: the remote-engine tests run against a real inference server, not a mock.
# The source ships inside the PyPI sdist of llama-cpp-python (vendor/llama.cpp), so
# only the package registry is needed (--no-binary for this one package only: pip
# builds the sdist's metadata with its build tools, which may come as wheels).
# The build takes ~10 minutes of CPU on two cores, hence the cache: a second run
# exits at once. Static libraries, so the one binary is all the cache keeps.
#
# Prints the binary's path on its last line. Exit status 0 when the binary exists.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${CHAT_LLAMA_CACHE:-${HOME:-/tmp}/.cache/team-chat/llama-server}"
BIN="$CACHE/bin/llama-server"
# A portable build (AVX2/FMA/F16C, no -march=native): a native build on a CPU that lists AMX
# died with SIGILL at its first matrix product inside a VM that does not grant AMX, and CI may
# run on another CPU than the one that built the cache. The stamp marks a portable build; a
# binary without it (an older native build) is rebuilt.
STAMP="$CACHE/bin/.portable-avx2"
if [ -x "$BIN" ] && [ ! -f "$STAMP" ]; then
  rm -f "$BIN"
fi
PYTHON="${PYTHON:-python3}"
JOBS="${LLAMA_BUILD_JOBS:-2}"

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
for tool in cmake cc c++; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build_llama_server: $tool is missing" >&2; exit 2; }
done

mkdir -p "$CACHE"
# One build at a time: a second caller waits for the first instead of racing it.
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

WORK="$CACHE/src"
rm -rf "$WORK"
mkdir -p "$WORK"
"$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
  "llama-cpp-python==$VERSION" -d "$WORK"
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"

cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >"$WORK/cmake.log"
cmake --build "$WORK/build" --target llama-server -j"$JOBS" >"$WORK/build.log"

mkdir -p "$CACHE/bin"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
touch "$STAMP"
rm -rf "$WORK"
echo "$BIN"
