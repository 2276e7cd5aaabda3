# Sourced by scripts/test. Installs Debian packages whose *programs* the tests run
# themselves (as child processes on free loopback ports), never as system services: during
# the install a temporary /usr/sbin/policy-rc.d forbids starting any service, and a service
# unit the install enabled is disabled again, so the machine's services stay as they were.
#
#   packages_ensure_nginx   install the `nginx` package if no nginx binary is found;
#                           exports NGINX_BIN (read by crates/server/tests/it/support/nginx.rs)

packages_log() { printf '==> %s\n' "$*" >&2; }

packages_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# Runs "$@" with service starts forbidden (invoke-rc.d and deb-systemd-invoke obey
# policy-rc.d; exit 101 means "action forbidden"). An existing policy-rc.d (Docker images
# ship one) is left alone.
packages_without_services() {
  local policy=/usr/sbin/policy-rc.d created="" rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Temporary, from rendezvous scripts/lib/packages.sh: no service starts during an install.\nexit 101\n' |
      packages_as_root tee "$policy" >/dev/null
    packages_as_root chmod 755 "$policy"
    created=1
  fi
  "$@" || rc=$?
  if [ -n "$created" ]; then packages_as_root rm -f "$policy"; fi
  return "$rc"
}

packages_apt_install() {
  packages_as_root apt-get update -qq
  packages_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

packages_nginx_path() {
  local bin
  for bin in "${NGINX_BIN:-}" "$(command -v nginx 2>/dev/null)" /usr/sbin/nginx; do
    if [ -n "$bin" ] && [ -x "$bin" ]; then echo "$bin"; return 0; fi
  done
  return 1
}

packages_ensure_nginx() {
  local bin
  if ! bin=$(packages_nginx_path); then
    echo "nginx not found: installing it (apt-get install nginx; the nginx service is neither started nor enabled)" >&2
    packages_without_services packages_apt_install nginx
    # The package's postinst enables nginx.service for boot; undo that (the tests start
    # their own nginx processes, and the machine did not run one before).
    if command -v deb-systemd-helper >/dev/null; then
      packages_as_root deb-systemd-helper disable nginx.service >/dev/null 2>&1 || true
    fi
    if [ -x /etc/init.d/nginx ] && command -v update-rc.d >/dev/null; then
      packages_as_root update-rc.d nginx disable >/dev/null 2>&1 || true
    fi
    bin=$(packages_nginx_path) || { echo "no nginx binary found after installing nginx" >&2; return 1; }
  fi
  packages_log "using $("$bin" -v 2>&1 | sed 's/^nginx version: //') ($bin)"
  export NGINX_BIN=$bin
}
