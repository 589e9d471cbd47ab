# Sourced by deploy/postgres/postgres.sh and deploy/prometheus/prometheus.sh, which install a Debian package when
# what they run is missing. Needs the caller's log and die.
#
#   apt_prepare WHAT PACKAGE MINIMUM
#
# Sets SUDO (empty as root, else sudo) and APT (a non-interactive apt-get, through SUDO) and runs apt-get update;
# dies with what to do by hand when there is neither root nor sudo, or no apt-get.
apt_prepare() {
  local what=$1 package=$2 minimum=$3
  SUDO=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || die "$what is not installed and we are not root (no sudo): apt-get install $package"
    SUDO=(sudo)
  fi
  command -v apt-get >/dev/null || die "$what is not installed and there is no apt-get: install $what >= $minimum by hand"
  log "installing Debian's $package package"
  APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold)
  "${APT[@]}" update >&2
}
