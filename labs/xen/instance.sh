# labs/xen/instance.sh -- sourced by labs/xen/boot, stop and ssh: which lab instance a call is about and
# everything that follows from its number (issue 13, the two-host Xen lab). Not executable on its own.
#
#   xenlab_instance "$@"   reads leading --instance N / --instance=N (default $CORRAL_XENLAB_INSTANCE, else 1)
#                          and sets INSTANCE, RUN, SSH_PORT, AGENT_PORT, LIBVIRT_PORT, QEMU_NAME, HOSTNAME_DOM0,
#                          LINK_PORT, PEER, PEER_LINK_PORT, LINK_ADDR, LINK_MAC; NARGS = how many args it consumed.
#
# Instance 1 is the lab as it always was: run dir <cache>/run, ports 2222 / 18470 / 16510 (or the
# CORRAL_XENLAB_{SSH,AGENT,LIBVIRT}_PORT settings). Instance N (2-9) adds (N-1) * CORRAL_XENLAB_PORT_STEP
# (default 10) to each port and uses <cache>/run<N>. All instances share the cache (image, keys, token).
#
# The link between dom0s: a second NIC on each QEMU, a point-to-point UDP "dgram" netdev on the build host's
# loopback (nothing leaves the machine): instance N binds 127.0.0.1:(CORRAL_XENLAB_LINK_PORT, default
# 18570, + N) and sends to its peer's port. Peers are 1<->2, 3<->4, ... In dom0 that NIC (MAC LINK_MAC) gets
# 10.78.0.N/24 and the hostname xenlabN (dom0-init, from corral_lab_instance=N on dom0's kernel command line).

xenlab_instance() {
  CACHE=${CORRAL_XENLAB_DIR:-/var/tmp/corral-xenlab}
  INSTANCE=${CORRAL_XENLAB_INSTANCE:-1}
  NARGS=0
  case ${1:-} in
    --instance) INSTANCE=${2:-}; NARGS=2 ;;
    --instance=*) INSTANCE=${1#--instance=}; NARGS=1 ;;
  esac
  if ! [[ $INSTANCE =~ ^[1-9]$ ]]; then
    echo "[xenlab] ERROR: --instance must be 1-9 (got '$INSTANCE')" >&2
    exit 2
  fi
  local step=${CORRAL_XENLAB_PORT_STEP:-10} off
  off=$(( (INSTANCE - 1) * step ))
  if [ "$INSTANCE" = 1 ]; then RUN=$CACHE/run; QEMU_NAME=corral-xenlab
  else RUN=$CACHE/run$INSTANCE; QEMU_NAME=corral-xenlab$INSTANCE; fi
  SSH_PORT=$(( ${CORRAL_XENLAB_SSH_PORT:-2222} + off ))
  AGENT_PORT=$(( ${CORRAL_XENLAB_AGENT_PORT:-18470} + off ))
  LIBVIRT_PORT=$(( ${CORRAL_XENLAB_LIBVIRT_PORT:-16510} + off ))
  HOSTNAME_DOM0=xenlab$INSTANCE
  if (( INSTANCE % 2 )); then PEER=$(( INSTANCE + 1 )); else PEER=$(( INSTANCE - 1 )); fi
  LINK_PORT=$(( ${CORRAL_XENLAB_LINK_PORT:-18570} + INSTANCE ))
  PEER_LINK_PORT=$(( ${CORRAL_XENLAB_LINK_PORT:-18570} + PEER ))
  LINK_ADDR=10.78.0.$INSTANCE
  LINK_MAC=52:54:00:78:00:0$INSTANCE
}
