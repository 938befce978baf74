#!/usr/bin/env bash
# Builds a domesday image with buildah from `scratch`, without any registry: the
# binary, the shared libraries it loads (as `ldd` lists them), /etc/passwd and
# /etc/group with the runtime user, /tmp and the state directory. Nothing else: no
# shell, no package manager.
#
#   deploy/container/build-from-scratch.sh domesday-agent target/release/domesday-agent [IMAGE]
#   deploy/container/build-from-scratch.sh domesday-collector target/release/domesday-collector [IMAGE]
#
# IMAGE defaults to localhost/<name>:<version>. Storage is buildah's (set
# CONTAINERS_STORAGE_CONF to build elsewhere). The agent runs as UID 0 (RAPL's
# energy_uj is root-only; drop every capability when running it), the collector as
# UID 65532. See docs/deploy.md.
set -euo pipefail

name=${1:?usage: $0 domesday-agent|domesday-collector BINARY [IMAGE]}
bin=${2:?usage: $0 domesday-agent|domesday-collector BINARY [IMAGE]}
case "$name" in
  domesday-agent)
    user=0:0
    port=9955
    cmd='["run", "--listen", "0.0.0.0:9955"]'
    ;;
  domesday-collector)
    user=65532:65532
    port=9956
    cmd='["serve", "--config", "/etc/domesday/collector.toml"]'
    ;;
  *)
    echo "$0: unknown binary $name (domesday-agent or domesday-collector)" >&2
    exit 2
    ;;
esac
version=$("$bin" --version | awk '{print $2}')
image=${3:-localhost/$name:$version}

stage=$(mktemp -d)
ctr=
cleanup() {
  rm -rf "$stage"
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null; fi
}
trap cleanup EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/$name"
# The loader and every library at the path the binary asks for (merged /usr: /lib
# and /lib64 are symlinks into /usr, as on Debian); 0755, since the kernel executes
# the loader.
ldd "$bin" | awk '/=> \// {print $3} /^\t\// {print $1}' | while read -r lib; do
  dir=$(readlink -f "$(dirname "$lib")")
  install -D -m 0755 "$(readlink -f "$lib")" "$stage$dir/$(basename "$lib")"
done
mkdir -p "$stage/usr/lib64" "$stage/etc" "$stage/tmp" "$stage/var/lib/$name" "$stage/etc/domesday"
ln -s usr/lib "$stage/lib"
ln -s usr/lib64 "$stage/lib64"
ln -s usr/bin "$stage/bin"
chmod 1777 "$stage/tmp"
printf 'root:x:0:0:root:/:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/%s:/usr/sbin/nologin\n' "$name" > "$stage/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$stage/etc/group"

ctr=$(buildah from scratch)
buildah copy --quiet --chown 0:0 "$ctr" "$stage" / >/dev/null
buildah copy --quiet --chown "$user" "$ctr" "$stage/var/lib/$name" "/var/lib/$name" >/dev/null
buildah config \
  --entrypoint "[\"/usr/bin/$name\"]" \
  --cmd "$cmd" \
  --user "$user" \
  --port "$port" \
  --workingdir "/var/lib/$name" \
  --volume "/var/lib/$name" \
  --label "org.opencontainers.image.title=$name" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.licenses=Apache-2.0" \
  --label "org.opencontainers.image.source=https://github.com/domesday-dc/domesday" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=
echo "$image"
