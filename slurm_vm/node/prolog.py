"""The prolog: validate the job's VM spec as untrusted input, then prepare disks and networks."""

from __future__ import annotations

import os
from dataclasses import replace

import yaml

from .. import transport
from ..config import USER_IMAGE_PREFIX, Config, is_user_image
from ..errors import ImageError, NodeError, NodeNotReady, SlurmVmError, UserFault, is_users_fault
from ..networks.allocation import Holding
from ..slurm import get_backend
from ..spec import VMSpec, check_user_access, parse_spec
from .allocate import allocate_for_job
from .context import JobContext
from .hostfacts import HostFacts, gather
from ..networks.identities import check_node_identities
from .journal import Journal
from .layout import ensure_state_dirs, error_note_path
from .log import hook_context, log_event, one_line
from .plan import NodePlan, make_plan
from .prepare import prepare_node
from .teardown import teardown_job
from .underlay import resolve_underlays
from .timelimit import PROLOG_TIMEOUT_SECONDS, time_limit

EXIT_OK = 0
EXIT_NODE_FAULT = 1


def read_spec_text(ctx: JobContext, config: Config) -> str:
    ref = transport.parse_comment(ctx.comment)   # a damaged comment is refused before any RPC
    if ref.inline is not None:
        return ref.inline
    backend = get_backend("cli", config.slurm.command_timeout, config.slurm.bin_dir)
    return transport.spec_from_script(backend.batch_script(ctx.job_id), ref)


def load_job_spec(ctx: JobContext, config: Config) -> VMSpec:
    source = f"job {ctx.job_id} spec"
    spec = parse_spec(read_spec_text(ctx, config), source, config)
    check_user_access(spec, config, ctx.user, source)
    return spec


def ensure_checkpoint_dir(spec: VMSpec, config: Config, ctx: JobContext) -> None:
    """A checkpointing VM's user dir exists and is the user's before the job runs (checkpoint/userdir.py)."""
    path = config.checkpoint.user_dir(ctx.user)
    if spec.checkpoints and path is not None:
        from ..checkpoint.userdir import ensure_user_dir
        ensure_user_dir(path, ctx.user, ctx.uid, ctx.gid, os.getgrouplist(ctx.user, ctx.gid))


# What the pure planning code can raise on input it did not expect. The plan is computed from the user's
# spec alone (and the admin's config, checked when loaded), so such a failure is the spec's, never the node's.
_PLANNING_BUGS = (ValueError, TypeError, LookupError, ArithmeticError, RecursionError, yaml.YAMLError)


USER_IMAGE_CHECK_TIMEOUT = 60.0


def with_user_image(spec: VMSpec, config: Config, ctx: JobContext) -> tuple[Config, int | None]:
    """A spec's `image: user:NAME`: checked again, *as the user* (root never parses the user's file), and put in
    the config the plan reads as one more image (the admin image it boots like, with the user's file as its
    path); also its virtual size, so that root never opens it to make the overlay. Other specs: unchanged."""
    if not is_user_image(spec.image):
        return config, None
    from ..disks.repository import resolve_for_use
    from ..disks.safefs import run_as_user
    directory = config.user_images.user_dir(ctx.user)
    if directory is None:
        raise ImageError(f"image: {spec.image}: this node's config has no user_images.repository")
    name = spec.image.removeprefix(USER_IMAGE_PREFIX)
    try:
        image = run_as_user(ctx.uid, ctx.gid, os.getgrouplist(ctx.user, ctx.gid), resolve_for_use, directory, name,
                            ctx.uid, config.user_images.max_virtual_size, config.hypervisor.qemu_img,
                            sorted(config.images), timeout=USER_IMAGE_CHECK_TIMEOUT)
    except NodeError as exc:   # whatever the check as the user met is the user's file's doing
        raise ImageError(f"image {spec.image}: {exc}".replace(f"image {spec.image}: image: ", "image: ")) from None
    boot = config.images.get(image.boot)
    if boot is None:
        raise ImageError(f"image {spec.image} boots like {image.boot!r}, which is no longer an admin image: "
                         f"import it again with --boot (one of {', '.join(sorted(config.images))})")
    effective = replace(boot, path=image.path, format="qcow2", description=f"user image {name}")
    return replace(config, images={**config.images, spec.image: effective}), image.virtual_size


def with_cached_base(spec: VMSpec, config: Config, ctx: JobContext) -> Config:
    """An admin image's node-local copy (image_cache) in place of its shared path; the shared path when there is no
    cache, for users' images (never cached), or when the copy cannot be had now (logged: the job still runs)."""
    cache_dir = config.image_cache.node_dir(ctx.node)
    if cache_dir is None or is_user_image(spec.image):
        return config
    from ..disks.imagecache import ensure_cached
    import time
    image = config.images[spec.image]
    try:
        result = ensure_cached(image.path, cache_dir, config.image_cache.max_size,
                               deadline=time.monotonic() + config.image_cache.fill_seconds,
                               lock_timeout=config.image_cache.fill_seconds + 5)
    except (NodeError, OSError) as exc:
        log_event("prolog", ctx.job_id, f"image cache: {exc}; reading {image.path}", config.log_file, error=True)
        return config
    if result.filled:
        log_event("prolog", ctx.job_id, f"image cache: {'refilled a damaged copy of' if result.refetched else 'copied'}"
                  f" {image.path}" + (f"; evicted {len(result.evicted)}" if result.evicted else ""), config.log_file)
    return replace(config, images={**config.images, spec.image: replace(image, path=result.path)})


def plan_job(spec: VMSpec, config: Config, ctx: JobContext, holding: Holding | None, underlays: dict | None,
             facts: HostFacts | None, base_size: int | None = None) -> NodePlan:
    """make_plan, with everything it builds from the spec (seed documents included) proved writable."""
    try:
        plan = make_plan(spec, config, ctx, holding, underlays, facts, base_size)
        seed = plan.seed
        for text in (seed.meta_data, seed.user_data, seed.network_config, seed.vendor_data):
            (text or "").encode("utf-8")
        return plan
    except _PLANNING_BUGS as exc:
        log_event("prolog", ctx.job_id, f"planning failed: {type(exc).__name__}: {exc}", config.log_file, error=True)
        raise UserFault(f"slurm-vm cannot build a VM from this spec ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); `slurm-vm validate` should have refused it: please report this") from None


def write_error_note(config: Config, ctx: JobContext, message: str) -> None:
    """Tell the job's launcher (and so the user's output file) why the prolog refused the job."""
    path = error_note_path(config.node_state_dir(ctx.node), ctx.job_id)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    try:
        os.write(fd, (one_line(message) + "\n").encode("utf-8", "replace"))
        os.fchown(fd, ctx.uid, ctx.gid)
    finally:
        os.close(fd)


def run_prolog(env: dict[str, str]) -> int:
    loaded = hook_context("prolog", env)
    if loaded is None:
        return EXIT_NODE_FAULT
    ctx, config = loaded
    try:
        with time_limit(PROLOG_TIMEOUT_SECONDS, "the prolog"):
            state_dir = config.node_state_dir(ctx.node)
            ensure_state_dirs(state_dir)
            journal = Journal(state_dir, ctx.job_id)
            if journal.exists():   # a requeued job, or a prolog retried after a crash
                teardown_job(state_dir, ctx.job_id, ctx.uid)
            spec = load_job_spec(ctx, config)
            check_node_identities(spec, config)
            ensure_checkpoint_dir(spec, config, ctx)
            job_config, base_size = with_user_image(spec, config, ctx)
            job_config = with_cached_base(spec, job_config, ctx)
            holding = allocate_for_job(spec, config, ctx, state_dir)
            facts = gather(config, ctx.user, ctx.uid, ctx.gid)
            prepare_node(plan_job(spec, job_config, ctx, holding, resolve_underlays(spec, config, ctx), facts,
                                  base_size), journal)
    except SlurmVmError as exc:
        if is_users_fault(exc) or isinstance(exc, NodeNotReady):   # the health check drains unready nodes
            return _refuse(config, ctx, "; ".join(str(exc).splitlines()), may_drain=is_users_fault(exc))
        log_event("prolog", ctx.job_id, str(exc), config.log_file, error=True)
        return EXIT_NODE_FAULT
    except OSError as exc:
        log_event("prolog", ctx.job_id, f"system error: {exc}", config.log_file, error=True)
        return EXIT_NODE_FAULT
    log_event("prolog", ctx.job_id, f"prepared VM {spec.name} for {ctx.user}", config.log_file)
    return EXIT_OK


def _refuse(config: Config, ctx: JobContext, message: str, may_drain: bool = True) -> int:
    log_event("prolog", ctx.job_id, f"refused: {message}", config.log_file, error=True)
    if may_drain and config.user_errors == "drain-node":
        return EXIT_NODE_FAULT
    try:
        write_error_note(config, ctx, message)
    except OSError as exc:
        log_event("prolog", ctx.job_id, f"cannot write the error note: {exc}", config.log_file, error=True)
        return EXIT_NODE_FAULT
    return EXIT_OK
