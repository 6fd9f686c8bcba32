"""The `slurm-vm` command. Commands stay thin: parse options, call the library, print.

Imports of the library happen inside commands so that `slurm-vm --help` stays fast.
"""

from __future__ import annotations

import json
import sys

import click


class _Group(click.Group):
    """Turns slurm-vm's own errors into one line each (no traceback) and the error's exit code
    (the table is in slurm_vm/errors.py and docs/user-guide.md)."""

    def invoke(self, ctx: click.Context):
        from .errors import SlurmVmError, ValidationError
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            for problem in exc.problems:
                click.echo(f"slurm-vm: {problem}", err=True)
            ctx.exit(exc.exit_code)
        except SlurmVmError as exc:
            for line in exc.details:
                click.echo(f"  | {line}")
            click.echo(f"slurm-vm: {exc}", err=True)
            ctx.exit(exc.exit_code)


def _config(path: str | None):
    from .config import load_config
    return load_config(path)


def _job_dir_here(config, job_id: int) -> str:
    """A node relay's job dir: the job's on this node (srun sets SLURMD_NODENAME in the job step)."""
    import os
    from .node.layout import job_dir
    return job_dir(config.node_state_dir(os.environ.get("SLURMD_NODENAME", "")), job_id)


def _backend(config):
    from .slurm import get_backend
    return get_backend(config.slurm.backend, config.slurm.command_timeout, config.slurm.bin_dir)


def _complete_vm(ctx, param, incomplete: str):
    from .completion import complete_vm
    return complete_vm(ctx, param, incomplete)


config_option = click.option("--config", "config_path", metavar="PATH", envvar="SLURM_VM_CONFIG",
                             help="admin config (default /etc/slurm-vm/config.yaml)")
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slurm-vm")
def main() -> None:
    """Run virtual machines as Slurm jobs."""


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@config_option
def validate(specs: tuple[str, ...], as_json: bool, config_path: str | None) -> None:
    """Check VM specs against the admin config; one line per problem."""
    from .errors import ValidationError
    from .lifecycle import current_user
    from .spec import validate_files
    results = validate_files(specs, _config(config_path), current_user())
    if as_json:
        click.echo(json.dumps([{"spec": path, "ok": not problems, "problems": [str(p) for p in problems]}
                               for path, problems in results], indent=2))
        sys.exit(2 if any(problems for _, problems in results) else 0)
    for path, problems in results:
        if not problems:
            click.echo(f"{path}: ok")
    problems = [p for _, found in results for p in found]
    if problems:
        raise ValidationError(problems)


# slurm-vm's own options may stand anywhere; everything else goes to sbatch (after `--`, everything does,
# e.g. `slurm-vm submit vm.yaml -- --wait` for sbatch's own --wait).
@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True})
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.argument("sbatch_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--dry-run", is_flag=True, help="print the sbatch command and batch script; submit nothing")
@click.option("--parsable", is_flag=True, help="print only the job id")
@click.option("--wait", is_flag=True, help="wait until the guest is up (cloud-init finished), then say how to connect")
@click.option("--wait-for", metavar="TEXT", help="with --wait: text the guest prints on its console when ready "
                                                  "(for images without cloud-init)")
@click.option("--timeout", default=600, show_default=True, help="seconds --wait may take")
@config_option
def submit(spec_path: str, sbatch_args: tuple[str, ...], dry_run: bool, parsable: bool, wait: bool,
           wait_for: str | None, timeout: int, config_path: str | None) -> None:
    """Submit a VM spec as a Slurm batch job. Extra arguments go to sbatch as they are."""
    from .lifecycle import current_user
    from .spec import check_user_access, load_spec_file
    from .submit import plan_submission
    config = _config(config_path)
    spec, text = load_spec_file(spec_path, config)
    check_user_access(spec, config, current_user(), spec_path)
    from .catalog import check_user_image_named
    check_user_image_named(config, current_user(), spec.image)
    plan = plan_submission(text, spec, config, sbatch_args)
    if dry_run:
        click.echo(plan.describe())
        return
    backend = _backend(config)
    job_id = backend.submit(plan.script, plan.sbatch_args)
    click.echo(str(job_id) if parsable else f"Submitted VM {spec.name} as job {job_id}")
    if wait:
        _wait_and_tell(config, backend, job_id, wait_for, timeout, quiet=parsable)


def _wait_and_tell(config, backend, job_id: int, wait_for: str | None, timeout: float, quiet: bool) -> None:
    from .output import progress_reporter
    from .readiness import how_to_connect, render, wait_for_ready
    with progress_reporter(key=lambda p: (p.stage, p.state, p.reason), text=render) as report:
        progress = wait_for_ready(backend, config, job_id, wait_for, timeout, report)
    if not quiet:
        job = backend.jobs(job_ids=(job_id,))
        from .lifecycle import with_spec
        click.echo(how_to_connect(with_spec(backend, job[0]), progress) if job else f"VM {progress.vm_name} is ready")


@main.command("wait")
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.option("--wait-for", metavar="TEXT", help="text the guest prints when ready (default: cloud-init's "
                                                  "final message that slurm-vm sets)")
@click.option("--timeout", default=600, show_default=True, help="seconds to wait")
@config_option
def wait_cmd(ref: str, wait_for: str | None, timeout: int, config_path: str | None) -> None:
    """Wait until a VM's guest is up (job running, VMM started, guest ready), then say how to connect."""
    from .lifecycle import current_user
    from .vmaccess import owned_vm
    config = _config(config_path)
    backend = _backend(config)
    job = owned_vm(backend, ref, current_user())
    _wait_and_tell(config, backend, job.job_id, wait_for, timeout, quiet=False)


@main.command()
@click.option("--definition", metavar="PATH", help="vm.json (default: the job's, from the node state dir)")
@click.option("--grace-seconds", type=click.IntRange(0, 3600), default=None,
              help="ACPI power button to hard stop (set by `submit`, which also sets the --signal lead from it)")
@config_option
def launch(definition: str | None, grace_seconds: int | None, config_path: str | None) -> None:
    """Run the job's VM (the batch script's job step; not for interactive use)."""
    from .node.launch import launch_job
    sys.exit(launch_job(definition, config_path, grace_seconds))


@main.command("list")
@click.option("--all-users", is_flag=True, help="every user's VMs (as far as Slurm shows them)")
@click.option("--ended", is_flag=True, help="include VMs that ended recently")
@click.option("--all", "history", is_flag=True, help="your VMs that ended too, from Slurm's accounting (sacct)")
@click.option("--since", metavar="WHEN", help="with --all: 30m, 12h, 7d, 2w back, or a date (default 30d)")
@click.option("--state", "states", metavar="STATE,...", help="with --all: only VMs whose last run is in these states")
@json_option
@config_option
def list_cmd(all_users: bool, ended: bool, history: bool, since: str | None, states: str | None, as_json: bool,
             config_path: str | None) -> None:
    """List your VM jobs."""
    from .checkpoint.listing import unlisted_note
    from .lifecycle import current_user, list_vms
    from .output import print_records
    config = _config(config_path)
    user = None if all_users else current_user()
    if history or since or states:
        from .history import DEFAULT_SINCE, history_or_live, parse_states
        from .output import print_history
        listing = history_or_live(_backend(config), config, user, since or DEFAULT_SINCE, parse_states(states))
        print_history(listing, as_json, user)
        return
    from .guestexec import with_guest_addresses
    records = with_guest_addresses(list_vms(_backend(config), user, ended, config), config.slurm_vm_command,
                                   current_user())
    note = unlisted_note(config.checkpoint.user_dir(current_user()), {r.job_id for r in records})
    print_records(records, as_json, user, ended, note)


@main.command()
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.option("--lines", default=10, show_default=True, help="serial log lines to show")
@json_option
@config_option
def status(ref: str, lines: int, as_json: bool, config_path: str | None) -> None:
    """Show one VM: its job, node, cores, memory and the last serial console lines."""
    from .errors import NotFound, SlurmError
    from .lifecycle import current_user, find_vm, managed_addresses, record_of, serial_tail, with_spec
    from .output import print_status
    config = _config(config_path)
    backend = _backend(config)
    try:
        job = with_spec(backend, find_vm(backend, ref, current_user()))
    except NotFound as missing:   # slurmctld forgot it: the accounting storage may know
        from .history import ended_status
        from .output import print_history_status
        print_history_status(*ended_status(config, ref, current_user(), missing), as_json)
        return
    try:
        serial = serial_tail(config, job, lines, config.slurm.command_timeout)
    except SlurmError as exc:
        serial = f"(serial log unavailable: {exc})"
    from .checkpoint.listing import job_checkpoints, owner_uid
    checkpoints = job_checkpoints(config.checkpoint.user_dir(job.user), job.job_id, owner_uid(job.user))
    from .guestexec import guest_addresses
    print_status(record_of(job, managed_addresses(backend, config, [job]).get(job.job_id, ())), serial, as_json,
                 checkpoints, guest_addresses(job, config.slurm_vm_command) if job.user == current_user() else None)


@main.command()
@click.argument("ref", metavar="NAME|JOBID", required=False, shell_complete=_complete_vm)
@click.option("--stop", is_flag=True, help="save, then end the run: the job waits requeued and held "
                                           "(`scontrol release` continues the VM)")
@click.option("--drop", is_flag=True, help="remove the job's checkpoints (also of jobs Slurm no longer knows)")
@click.option("--list", "list_all", is_flag=True, help="every checkpoint in your checkpoint dir and its job's state")
@json_option
@config_option
def checkpoint(ref: str | None, stop: bool, drop: bool, list_all: bool, as_json: bool, config_path: str | None) -> None:
    """Save a running VM (it keeps running); --stop, --drop, --list: see docs/checkpoint.md."""
    from . import checkpoint_command as command
    from .lifecycle import current_user
    if sum((stop, drop, list_all)) > 1 or (ref is None) != list_all:
        raise click.UsageError("give NAME|JOBID with at most one of --stop and --drop, or --list alone")
    config = _config(config_path)
    backend = _backend(config)
    if list_all:
        command.print_listing(command.listing(backend, config, current_user()), as_json)
    elif drop:
        click.echo(command.drop(backend, config, ref, current_user()))
    else:
        click.echo(command.checkpoint_vm(backend, config, ref, current_user(), stop))


@main.command("checkpoint-relay", hidden=True)
@click.argument("job_id", type=int)
@click.option("--stop", is_flag=True)
@config_option
def checkpoint_relay(job_id: int, stop: bool, config_path: str | None) -> None:
    """The node end of `slurm-vm checkpoint` (run by srun inside the job): asks the launcher, prints its answer."""
    from .checkpoint_command import relay
    config = _config(config_path)
    sys.exit(relay(_job_dir_here(config, job_id), stop))


@main.command()
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.option("--log", "log_only", is_flag=True, help="print the serial log (read-only) instead of attaching")
@click.option("--follow", "-f", is_flag=True, help="with --log: keep printing new output until interrupted")
@click.option("--lines", default=100, show_default=True, help="with --log: lines of history to start with")
@config_option
def console(ref: str, log_only: bool, follow: bool, lines: int, config_path: str | None) -> None:
    """Attach to a VM's serial console (detach with Ctrl-]), or print its log with --log."""
    from .console import attach
    from .lifecycle import current_user, node_command, serial_log_path
    from .vmaccess import owned_vm, require_running
    config = _config(config_path)
    backend = _backend(config)
    job = owned_vm(backend, ref, current_user())
    node = require_running(backend, job)
    if not (log_only or follow):
        sys.exit(attach(job.job_id, job.vm_name, node, config.slurm_vm_command))
    argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), serial_log_path(config, job, node)]
    proc = node_command(job, node, argv, None if follow else config.slurm.command_timeout)
    if not follow:
        click.echo(proc.stdout, nl=False)
        if proc.returncode != 0:
            click.echo(proc.stderr, err=True, nl=False)
    sys.exit(proc.returncode)


@main.command("console-relay", hidden=True)
@click.argument("job_id", type=int)
@config_option
def console_relay(job_id: int, config_path: str | None) -> None:
    """The node end of `slurm-vm console` (run by srun inside the job)."""
    from .console import relay
    config = _config(config_path)
    sys.exit(relay(_job_dir_here(config, job_id)))


@main.command("exec")
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.option("--vm", "vm_index", type=click.IntRange(0, None), default=0, show_default=True,
              help="which VM of a `count: N` job (0 is the first)")
@click.option("--timeout", type=click.IntRange(1, 86400), default=300, show_default=True,
              help="seconds the command may run (then exit code 124; it may still run in the guest)")
@click.option("--stdin", is_flag=True, help="hand this command's standard input (at most 1 MiB) to the guest's")
@click.argument("command", nargs=-1, required=True, metavar="-- CMD...")
@config_option
def exec_cmd(ref: str, vm_index: int, timeout: int, stdin: bool, command: tuple[str, ...],
             config_path: str | None) -> None:
    """Run a command in a VM through its guest agent; its output and exit code are the command's."""
    from .guestexec import run_exec, target_of
    from .lifecycle import current_user
    config = _config(config_path)
    target = target_of(_backend(config), ref, current_user(), vm_index)
    sys.exit(run_exec(target, config.slurm_vm_command, list(command), timeout, stdin))


@main.command("exec-relay", hidden=True)
@click.argument("job_id", type=int)
@click.option("--timeout", type=click.IntRange(1, 86400), default=300)
@click.option("--stdin", is_flag=True)
@click.argument("command", nargs=-1, required=True)
@config_option
def exec_relay(job_id: int, timeout: int, stdin: bool, command: tuple[str, ...], config_path: str | None) -> None:
    """The node end of `slurm-vm exec` (run by srun inside the job): the command's frames on stdout."""
    from .guestexec import relay
    config = _config(config_path)
    directory = _job_dir_here(config, job_id)
    sys.exit(relay(directory, list(command), timeout, sys.stdin.buffer if stdin else None))


@main.command("agent-relay", hidden=True)
@click.argument("job_id", type=int)
@click.option("--addresses", is_flag=True, required=True)
@config_option
def agent_relay(job_id: int, addresses: bool, config_path: str | None) -> None:
    """The node end of `slurm-vm status`'s guest addresses (run by srun inside the job)."""
    from .guestexec import addresses_relay
    config = _config(config_path)
    sys.exit(addresses_relay(_job_dir_here(config, job_id)))


@main.command()
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.option("--web", is_flag=True, help="serve the display to a browser (noVNC) instead of a VNC viewer")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="port on 127.0.0.1 (0: a free one)")
@config_option
def vnc(ref: str, web: bool, port: int, config_path: str | None) -> None:
    """Show a VM's display in a VNC viewer (or a browser with --web) until Ctrl-C; QEMU VMs only."""
    from .lifecycle import current_user
    from .vmaccess import owned_vm, require_running
    from .vnc import Target, run_session
    config = _config(config_path)
    backend = _backend(config)
    job = owned_vm(backend, ref, current_user())
    target = Target(job.job_id, job.vm_name, require_running(backend, job), config.slurm_vm_command)
    sys.exit(run_session(target, config.slurm.command_timeout, port, web, config.novnc_dir))


@main.command("vnc-relay", hidden=True)
@click.argument("job_id", type=int)
@click.option("--session", is_flag=True)
@config_option
def vnc_relay(job_id: int, session: bool, config_path: str | None) -> None:
    """The node end of `slurm-vm vnc` (run by srun inside the job)."""
    from .vncrelay import connect, session as hold_session
    config = _config(config_path)
    directory = _job_dir_here(config, job_id)
    sys.exit(hold_session(directory) if session else connect(directory))


@main.command()
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.option("--force", is_flag=True, help="cancel the job at once (plain scancel; the guest gets SIGTERM's grace)")
@config_option
def stop(ref: str, force: bool, config_path: str | None) -> None:
    """Shut a VM down: ACPI power button, then the job ends."""
    from .lifecycle import current_user, find_vm, stop_vm
    config = _config(config_path)
    backend = _backend(config)
    click.echo(stop_vm(backend, find_vm(backend, ref, current_user()), force))


def _guest_asker(job, slurm_vm_command: str):
    """For ssh/scp to a VM without an address slurm-vm knows: the addresses the first VM's guest reports."""
    def ask() -> tuple[str, ...]:
        from .guestexec import guest_addresses
        answers = guest_addresses(job, slurm_vm_command, vms=1)
        return answers[0] if answers and isinstance(answers[0], tuple) else ()
    return ask


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-l", "login", metavar="USER", help="user to log in as")
@click.argument("ref", metavar="NAME|JOBID", shell_complete=_complete_vm)
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@config_option
def ssh(ref: str, login: str | None, ssh_args: tuple[str, ...], config_path: str | None) -> None:
    """ssh to a VM, jumping through its node (extra arguments go to ssh; a command after them runs there)."""
    import os
    from .lifecycle import current_user, managed_addresses
    from .sshjump import ssh_command
    from .vmaccess import owned_vm, require_running
    config = _config(config_path)
    backend = _backend(config)
    job = owned_vm(backend, ref, current_user())
    argv = ssh_command(job, require_running(backend, job), config.slurm_vm_command, login, ssh_args,
                       managed_addresses(backend, config, [job]).get(job.job_id, ()), config.networks,
                       _guest_asker(job, config.slurm_vm_command))
    os.execvp(argv[0], argv)


@main.command()
@json_option
@config_option
def images(as_json: bool, config_path: str | None) -> None:
    """List the images you may put in a spec's `image`: the admins' and yours (`user:NAME`)."""
    from .catalog import list_images, list_user_images
    from .lifecycle import current_user
    from .output import print_images
    config = _config(config_path)
    print_images(list_images(config), as_json, list_user_images(config, current_user()))


@main.group()
def image() -> None:
    """Your own images (`image: user:NAME` in a spec): import, list, info, rm."""


@image.command("import")
@click.argument("source", metavar="FILE")
@click.argument("name")
@click.option("--boot", metavar="IMAGE", help="the admin image whose kernel or firmware boots it (default: the "
              "only one)")
@click.option("--format", "fmt", type=click.Choice(["qcow2", "raw"]), help="the file's format (default: from its "
              "name, .qcow2 or .raw/.img; never probed)")
@json_option
@config_option
def image_import(source: str, name: str, boot: str | None, fmt: str | None, as_json: bool,
                 config_path: str | None) -> None:
    """Copy FILE (qcow2 or raw) into your repository as a self-contained qcow2 named NAME."""
    from .catalog import import_user_image
    from .lifecycle import current_user
    from .output import print_user_image
    print_user_image(import_user_image(_config(config_path), current_user(), source, name, boot, fmt), as_json)


@image.command("save")
@click.argument("ref", metavar="VM", shell_complete=_complete_vm)
@click.argument("name")
@config_option
def image_save(ref: str, name: str, config_path: str | None) -> None:
    """Copy a running VM's disk into your repository as NAME; the VM keeps running (crash-consistent)."""
    from .imagesave import save_vm
    from .lifecycle import current_user
    config = _config(config_path)
    click.echo(save_vm(_backend(config), config, ref, current_user(), name))


@main.command("image-save-relay", hidden=True)
@click.argument("job_id", type=int)
@click.argument("name")
@click.option("--boot", required=True)
@config_option
def image_save_relay(job_id: int, name: str, boot: str, config_path: str | None) -> None:
    """The node end of `slurm-vm image save` (run by srun inside the job, as the user): prints a JSON answer."""
    import json
    from .imagesave import relay
    from .lifecycle import current_user
    config = _config(config_path)
    answer = relay(config, _job_dir_here(config, job_id),
                   current_user(), name, boot)
    click.echo(json.dumps(answer))
    sys.exit(0 if answer["ok"] else 1)


@image.command("list")
@json_option
@config_option
def image_list(as_json: bool, config_path: str | None) -> None:
    """Your images, each checked again, and your quota."""
    from .catalog import list_user_images, user_usage
    from .lifecycle import current_user
    from .output import print_user_images
    config = _config(config_path)
    print_user_images(list_user_images(config, current_user()), user_usage(config, current_user()), as_json)


@image.command("info")
@click.argument("name")
@json_option
@config_option
def image_info(name: str, as_json: bool, config_path: str | None) -> None:
    """One of your images, checked in full (qemu-img check)."""
    from .catalog import user_image_info
    from .lifecycle import current_user
    from .output import print_user_image
    print_user_image(user_image_info(_config(config_path), current_user(), name), as_json)


@image.command("rm")
@click.argument("name")
@config_option
def image_rm(name: str, config_path: str | None) -> None:
    """Remove one of your images."""
    from .catalog import remove_user_image
    from .lifecycle import current_user
    remove_user_image(_config(config_path), current_user(), name)
    click.echo(f"removed user:{name.removeprefix('user:')}")


@main.command()
@json_option
@config_option
def networks(as_json: bool, config_path: str | None) -> None:
    """List the networks you may put in a spec's `networks`."""
    from .catalog import list_networks
    from .lifecycle import current_user
    from .output import print_networks
    print_networks(list_networks(_config(config_path), current_user()), as_json)


@main.command("doctor")
@json_option
@config_option
def user_doctor(as_json: bool, config_path: str | None) -> None:
    """Check that slurm-vm works from here: config, Slurm, your images, networks and VMs."""
    from .lifecycle import current_user
    from .output import print_doctor
    from .userdoctor import run_user_doctor
    report = run_user_doctor(config_path, current_user())
    print_doctor(report, as_json)
    sys.exit(0 if report.ok else 1)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("scp_args", nargs=-1, required=True, type=click.UNPROCESSED)
@config_option
def scp(scp_args: tuple[str, ...], config_path: str | None) -> None:
    """scp to or from a VM through its node: slurm-vm scp [scp options] FILE [user@]NAME:PATH (or the reverse)."""
    import os
    from .lifecycle import current_user, managed_addresses
    from .sshjump import scp_command
    from .vmaccess import owned_vm, require_running
    config = _config(config_path)
    backend = _backend(config)

    def resolve(name: str):
        job = owned_vm(backend, name, current_user())
        return job, require_running(backend, job), config.slurm_vm_command
    argv = scp_command(scp_args, resolve, lambda job: managed_addresses(backend, config, [job]).get(job.job_id, ()),
                       config.networks, lambda job: _guest_asker(job, config.slurm_vm_command))
    os.execvp(argv[0], argv)


@main.command("tcp-relay", hidden=True)
@click.argument("host")
@click.argument("port", type=int)
def tcp_relay_cmd(host: str, port: int) -> None:
    """The node end of `slurm-vm ssh`/`scp` (their ProxyCommand, run by srun inside the job)."""
    from .sshjump import tcp_relay
    sys.exit(tcp_relay(host, port))


@main.command()
@click.argument("which", type=click.Choice(["spec", "config"]))
def reference(which: str) -> None:
    """Print every field of a spec or of the admin config (docs/*-reference.md are made from it)."""
    from .reference import render_reference
    click.echo(render_reference(which), nl=False)


@main.group()
def node() -> None:
    """Commands for admins on compute nodes."""


@node.command()
@config_option
def setup(config_path: str | None) -> None:
    """Keep the VXLAN underlay to root: guard devices on the VXLAN ports, rules against users' and guests' VXLAN
    traffic. Run at boot, before users can log in and before slurmd starts (admin guide, "Node setup")."""
    from .networks.underlay import ensure_underlay, guard_families, guard_name, plan_underlay
    plan = plan_underlay(_config(config_path))
    if plan is None:
        click.echo("no VXLAN networks in the config: nothing to set up")
        return
    ensure_underlay(plan)
    guards = ", ".join(guard_name(p, f) for p in plan.ports for f in guard_families())
    click.echo(f"VXLAN underlay kept to root: guards {guards}; nftables table inet svm_underlay")


@node.command()
@click.option("--fix", is_flag=True, help="remove the leftovers found (and remake the VXLAN guard and rules)")
@click.option("--node", "node_name", metavar="NAME", help="Slurm node name of this host (default: hostname)")
@json_option
@config_option
def doctor(fix: bool, node_name: str | None, as_json: bool, config_path: str | None) -> None:
    """List (and with --fix remove) slurm-vm objects that belong to no running job, and check that the VXLAN
    underlay is root's (guard devices, rules)."""
    from .node.doctor import run_doctor
    config = _config(config_path)
    findings = run_doctor(config, _backend(config), fix, node_name)
    if as_json:
        click.echo(json.dumps([f.as_json() for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(str(finding))
        if not findings:
            click.echo("no leftovers, underlay in place")
    sys.exit(1 if findings and not fix else 0)



@node.command("cache-fill")
@click.argument("images", nargs=-1)
@click.option("--node", "node_name", metavar="NAME", help="Slurm node name of this host (default: hostname)")
@config_option
def cache_fill(images: tuple[str, ...], node_name: str | None, config_path: str | None) -> None:
    """Copy admin base images (default: all) into this node's image cache ahead of jobs, without a time limit."""
    import socket
    from .disks.imagecache import ensure_cached
    from .errors import NodeError
    config = _config(config_path)
    cache_dir = config.image_cache.node_dir(node_name or socket.gethostname())
    if cache_dir is None:
        raise NodeError("image_cache.dir is unset: there is no image cache to fill")
    for name in images or sorted(config.images):
        if name not in config.images:
            raise NodeError(f"{name}: not an admin image ({', '.join(sorted(config.images))})")
        result = ensure_cached(config.images[name].path, cache_dir, config.image_cache.max_size)
        click.echo(f"{name}: {'copied to' if result.filled else 'already in'} {result.path}")


@node.command("check")
@click.option("--node", "node_name", metavar="NAME", help="Slurm node name of this host (default: hostname)")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="read /proc, /lib/modules, /dev and the images under this directory (tests, chroots)")
@click.option("--drain", is_flag=True, help="HealthCheckProgram: drain this node with the first problem as the "
              "reason; resume it once ready if this check drained it")
@click.option("--quiet", "-q", is_flag=True, help="print problems only")
@json_option
@config_option
def check(node_name: str | None, root: str, drain: bool, quiet: bool, as_json: bool, config_path: str | None) -> None:
    """Is this node ready for the configured images, networks and hypervisors? One line per prerequisite."""
    import socket
    from .node.readycheck import check_node, drain_reason
    config = _config(config_path)
    node_name = node_name or socket.gethostname().split(".")[0]
    results = check_node(config, node_name, root)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for result in results:
            if not (quiet and result.ok):
                click.echo(result.line())
    if drain:
        from .node.healthcheck import apply_drain
        apply_drain(config, node_name, drain_reason(results))
    sys.exit(0 if all(r.ok for r in results) else 1)

@node.command("install-hook")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", metavar="PATH", envvar="SLURM_VM_CONFIG", default="/etc/slurm-vm/config.yaml",
              show_default=True, help="the admin config the hook reads")
@click.option("--venv", metavar="DIR", help="the venv whose Python the hook runs (default: this command's)")
def install_hook_cmd(dest: str, config_path: str, venv: str | None) -> None:
    """Copy the node hook to DEST (e.g. /usr/local/sbin/slurm-vm-hook) for Prolog=/Epilog= or prolog.d/epilog.d."""
    from .node.hookinstall import current_venv, install_hook
    click.echo(install_hook(dest, config_path, current_venv() if venv is None else venv))

if __name__ == "__main__":
    main()
