"""Creating and deleting the parts of hosts, in as few commands as possible (each
costs ~2 ms on an idle machine, ~10 ms on a busy one): per host one `ip -batch` in
the root namespace, one inside the host's netns, and one `unshare` whose `sh` writes
the hostname, remounts / read-only and runs `mount -a` over a fstab of the host's
own. Teardown is one `ip -batch` and one `umount` for any number of hosts.

Called by `HostNetwork`; the layout of each host (`HostLayout`) holds every name."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import flotilla
from flotilla.runtime.hosts.commands import (
    HostError,
    held_namespaces,
    kill_namespace_processes,
    mounted_paths,
    run_command,
)
from flotilla.runtime.hosts.host import DATA_DIR, DATA_ROOT, INTERFACE, HostLayout

# Directories a real host has for itself: each gets a private tmpfs (the root file
# system is read-only inside a host, so these and its disk are its writable places).
PRIVATE_DIRS = (("/tmp", "1777"), ("/var/tmp", "1777"), ("/run", "0755"), ("/dev/shm", "1777"))
# The writable layer of each host's own /etc (an overlay on the machine's), and
# overlayfs's work directory, in the host's scratch directory.
ETC_LAYERS = ("etc-upper", "etc-work")
# Where the machine's paths that a private tmpfs would hide wait to be bound back.
STAGING = DATA_ROOT / ".machine"

# A constant script: the values come in as positional parameters, never spliced in.
# The hostname through /proc saves a process; `mount -a -T` does all mounts in one.
# / becomes read-only last: a bind made after would copy the flag (its source file
# is on /) and the host could not edit its own /etc/hosts.
_MOUNT_SCRIPT = (
    'set -e; printf "%s\\n" "$2" > /proc/sys/kernel/hostname; '
    'mount --all --fstab "$1"; '
    # The staging binds only carried software paths past the tmpfs mounts.
    f'for d in {STAGING}/*; do if [ -d "$d" ]; then umount "$d"; rmdir "$d"; fi; done; '
    f"if [ -d {STAGING} ]; then rmdir {STAGING}; fi; "
    'if [ "$3" = ro ]; then exec mount -o remount,bind,ro /; fi'
)


def setup_host(lay: HostLayout, bridge: str, home: Path | None, readonly_root: bool) -> None:
    """Create the host's network and its pinned mount/UTS namespaces; `teardown`
    undoes any part of it."""
    # `ip netns add` in a batch returns to the root netns for the next line; the
    # veth's peer is born inside the host's netns, so it can be eth0 there at once.
    run_command(
        ["ip", "-batch", "-"],
        input=(
            f"netns add {lay.netns}\n"
            f"link add {lay.veth} type veth peer name {INTERFACE} netns {lay.netns}\n"
            f"link set {lay.veth} master {bridge} up\n"
        ),
    )
    run_command(
        ["ip", "-n", lay.netns, "-batch", "-"],
        input=(
            f"addr add {lay.address}/{lay.prefix_len} dev {INTERFACE}\n"
            "link set lo up\n"
            f"link set {INTERFACE} up\n"
            # A default route as a real host has: the control plane is then reachable
            # at any of the machine's addresses, not only at the bridge's.
            f"route add default via {lay.gateway}\n"
        ),
    )
    for part in ETC_LAYERS:
        (lay.etc_dir / part).mkdir(exist_ok=True)
    fstab = lay.etc_dir / "fstab"
    fstab.write_text(_fstab(lay, home))
    for pin in (lay.mnt_pin, lay.uts_pin):
        pin.touch()
    # Private propagation: nothing mounted in a host shows up anywhere else.
    unshare = ["unshare", f"--mount={lay.mnt_pin}", f"--uts={lay.uts_pin}", "--propagation"]
    script = ["sh", "-c", _MOUNT_SCRIPT, "sh", str(fstab), lay.name]
    run_command([*unshare, "private", "--", *script, "ro" if readonly_root else "rw"])


def software_paths() -> list[Path]:
    """The running Python environment and Flotilla's own code: every host sees them,
    as real hosts of a fleet have the same software installed (a virtualenv or a
    clone under /tmp would otherwise be hidden by the host's private /tmp)."""
    package_root = Path(flotilla.__file__).resolve().parent.parent
    found = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return sorted({*found, package_root})


def _hidden(path: Path) -> bool:
    private = [Path(p) for p, _ in PRIVATE_DIRS] + [Path("/home")]
    return any(path == d or d in path.parents for d in private)


def _fstab(lay: HostLayout, home: Path | None) -> str:
    # Only this namespace's view of / becomes read-only; separate mounts (/proc, /sys
    # with the cgroups, /dev, and all of these) keep their own flags.
    src = lay.netns  # the tmpfs "device" name: whose mount it is, in any mount table
    etc = lay.etc_dir
    upper, work = (etc / part for part in ETC_LAYERS)
    rows = [
        # Its own /etc over the machine's: accounts made on the host (useradd for a
        # task's user) stay on the host, as on a real one; the machine's is untouched.
        (src, "/etc", "overlay", f"lowerdir=/etc,upperdir={upper},workdir={work}"),
        (str(etc / "hosts"), "/etc/hosts", "none", "bind"),
        (str(etc / "resolv.conf"), "/etc/resolv.conf", "none", "bind"),
        (str(etc / "hostname"), "/etc/hostname", "none", "bind"),
        # Binds of the machine's paths before the tmpfs mounts, which may hide them
        # (the scratch dir and a shared home are often under /tmp).
        (str(home), "/home", "none", "bind") if home else (src, "/home", "tmpfs", "mode=0755"),
        (src, str(DATA_ROOT), "tmpfs", "mode=0755"),
        (src, str(DATA_DIR), "tmpfs", "mode=0755,X-mount.mkdir"),
    ]
    # Software under a private directory: bound to a staging place on the host's
    # own disk first, while it is still visible, then back to where it was.
    kept = [p for p in software_paths() if _hidden(p)]
    staged = [STAGING / str(i) for i in range(len(kept))]
    pairs = list(zip(kept, staged, strict=True))
    rows += [(str(p), str(s), "none", "bind,X-mount.mkdir") for p, s in pairs]
    rows += [(src, path, "tmpfs", f"mode={mode}") for path, mode in PRIVATE_DIRS]
    rows += [(str(s), str(p), "none", "bind,ro,X-mount.mkdir") for p, s in pairs]
    for row in rows:
        if any(c.isspace() for c in "".join(row)):
            raise HostError(["mount", *row], "a path with white space cannot go in a fstab")
    return "".join(f"{a} {b} {c} {d} 0 0\n" for a, b, c, d in rows)


def teardown(
    layouts: Sequence[HostLayout],
    *,
    bridge: str | None = None,
    mounts: Sequence[Path] = (),
) -> list[HostError]:
    """Delete these hosts (whatever part of each exists), then `bridge` and `mounts`;
    returns what failed, after trying everything.

    The namespaces' identities are taken first, the namespaces held open until the
    end (`held_namespaces`): processes are killed by them both before the pins go
    and after (one that had opened a pin already, in nsenter, may enter in between).
    The veths are deleted from the root side: a dying netns takes its veth along only
    asynchronously, so it could still be listed right after."""
    errors: list[HostError] = []
    pinned = [p for lay in layouts for p in (lay.netns_path, lay.mnt_pin)]
    with held_namespaces(pinned) as ids:
        kill_namespace_processes(ids)
        batch = []
        for lay in layouts:
            if Path("/sys/class/net", lay.veth).exists():
                batch.append(f"link del {lay.veth}")
            if lay.netns_path.exists():
                batch.append(f"netns del {lay.netns}")
        if bridge and Path("/sys/class/net", bridge).exists():
            batch.append(f"link del {bridge}")
        if batch:
            # -force: go on after a failed line, so one stuck part does not keep the rest.
            _collect(errors, ["ip", "-force", "-batch", "-"], "\n".join(batch) + "\n")
        mounted = mounted_paths()
        pins = [p for lay in layouts for p in (lay.mnt_pin, lay.uts_pin)]
        targets = [str(p) for p in [*pins, *mounts] if str(p) in mounted]
        if targets:
            _collect(errors, ["umount", "--lazy", *targets])  # the held pins are busy
        left = kill_namespace_processes(ids)
    if left:
        errors.append(HostError(["kill", "-9", *map(str, left)], "processes survive"))
    return errors


def _collect(errors: list[HostError], argv: list[str], input: str | None = None) -> None:
    try:
        run_command(argv, input=input)
    except HostError as e:
        errors.append(e)
