# Sourced by scripts/test after scripts/lib/services.sh (it uses apt_install). The browser
# tests (crates/server/tests/browser) need Debian's `chromium` and Node with npm; install
# whichever is missing. The tests fetch no browser of their own, and under CI they fail
# rather than skip when one is missing.
#
#   browser_ensure   install chromium / nodejs + npm when missing

browser_ensure() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    services_log "installing ${missing[*]} for the browser tests"
    apt_install "${missing[@]}"
  fi
}
