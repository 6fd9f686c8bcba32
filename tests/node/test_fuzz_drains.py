"""Property test: whatever a user writes, a node hook either runs it or fails the job as the user's fault.

Generated hostile specs (any Unicode including lone surrogates and NUL, huge and deeply nested values,
YAML anchors, aliases, merge keys and tags, odd numbers and units) and hostile job comments go through
`validate` (parse_spec + check_user_access) and the prolog's planning core; a sample of them, with hostile
job-dir contents (FIFOs, symlinks, hard links, devices, sockets, huge files, deep trees at every name
root touches), through the REAL prolog and epilog as root (devtools.hooknode). The outcome must be
"ran" (the job is prepared, the epilog removes everything) or "refused" (exit 0 and a one-line note
naming the cause), never an exit 1 (a drained node), and nothing may be left behind.

Budget: SLURM_VM_FUZZ_SECONDS (default 60, split between the two tests) with a fixed seed
(SLURM_VM_FUZZ_SEED, default 20). By hand, e.g.:
    SLURM_VM_FUZZ_SECONDS=1800 SLURM_VM_FUZZ_SEED=$RANDOM python -m pytest tests/node/test_fuzz_drains.py
A finding is printed by hypothesis as the smallest failing example; add it to test_drains_root.py.
"""

from __future__ import annotations

import os
import re
import time

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

from devtools.hooknode import USER
from devtools.hostile import PLANTS, ROOT_NAMES, plant
from slurm_vm import transport
from slurm_vm.config import parse_config
from slurm_vm.disks.seed import build_seed_iso
from slurm_vm.disks.volumes import VolumeInfo
from slurm_vm.errors import TransportError, ValidationError
from slurm_vm.hypervisor.definition import VMDefinition
from slurm_vm.networks.addresses import network_address_plan
from slurm_vm.networks.allocation import Holding
from slurm_vm.node.context import JobContext
from slurm_vm.node.log import one_line
from slurm_vm.node.plan import make_plan
from slurm_vm.node.prepare import resolved_definition
from slurm_vm.spec import check_user_access, parse_spec
from tests.node.test_plan import CONFIG as PLAN_CONFIG

BUDGET = float(os.environ.get("SLURM_VM_FUZZ_SECONDS", "60"))
BASE_SEED = int(os.environ.get("SLURM_VM_FUZZ_SEED", "20"))
BATCH = 20   # examples per seeded batch; batches run until the budget is spent

def fuzz_config():
    """test_plan's config (every kind of network), with images named as the hook node names them, shares
    and checkpoints allowed."""
    data = yaml.safe_load(PLAN_CONFIG)
    data["images"]["base"] = data["images"].pop("deb")
    data.update({"mounts": {"allowed": ["/srv/data", "$HOME"]}, "checkpoint": {"dir": "/scratch/svm/%u"}})
    return parse_config(yaml.safe_dump(data), "fuzz config")


CONFIG = fuzz_config()

# --- strategies ---

ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=24)          # surrogates, NUL, controls
NAMES = st.sampled_from(["web", "base", "lan", "private", "uni", "shared", "fabric", "x", "", "a" * 300])
UNITS = st.sampled_from(["16M", "1G", "-1G", "0", "1e3M", "0x10", "1.5T", "9" * 40 + "K", "1 G", "1g", "1GiB",
                         "\u0661\u0662M", "1_000M", "+1G", "1.0000000001G", "NaNM", "inf", "16777216", "1K" * 3])
NUMBERS = st.one_of(st.integers(), st.integers(-3, 5000), st.floats(), UNITS)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ANY_TEXT, NAMES)
HUGE = st.sampled_from([1 << 10, 60 << 10, 65 << 10, 300 << 10]).map(lambda n: "#cloud-config\n#" + "x" * n)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


DEEP = st.integers(1, 100).map(nested)
VALUES = st.recursive(st.one_of(SCALARS, HUGE, DEEP),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT | NAMES, inner,
                                                                                   max_size=3), max_leaves=12)
NIC_VALUES = st.fixed_dictionaries({"network": st.one_of(NAMES, VALUES)}, optional={
    "mac": st.one_of(st.sampled_from(["52:54:00:12:34:56", "02:00:00:00:00:01", "01:00:5e:00:00:01",
                                      "00:00:00:00:00:00", "52:54:00:12:34:5G"]), VALUES),
    "address": st.one_of(st.sampled_from(["10.3.0.5/24", "10.3.0.150/24", "192.168.50.7/24", "10.3.0.1/24",
                                          "10.3.0.0/24", "10.3.0.255/24", "10.3.0.5/32", "999.0.0.1/24"]), VALUES),
    "gateway": st.one_of(st.sampled_from(["10.3.0.1", "10.3.0.256"]), VALUES)})
FIELDS = {
    "name": NAMES, "image": NAMES, "cpus": NUMBERS, "memory": NUMBERS, "disk": NUMBERS, "count": NUMBERS,
    "networks": st.lists(NIC_VALUES, max_size=3), "hypervisor": st.sampled_from(["auto", "qemu", "x"]),
    "time": st.one_of(st.sampled_from(["60", "1-00:00:00", "unlimited", "-1", "99999999999"]), VALUES),
    "on_preempt": st.sampled_from(["shutdown", "checkpoint"]), "on_timeout": st.sampled_from(["checkpoint", "x"]),
    "volumes": st.lists(st.fixed_dictionaries({"path": st.one_of(st.just("/srv/data/v.img"), VALUES)}), max_size=2),
    "mounts": st.lists(st.fixed_dictionaries({"source": st.one_of(st.sampled_from(
        ["/srv/data/d", "$HOME/x", "$HOME", "/srv/data/'q", "/srv/data/a\u2028b"]), VALUES), "target": st.one_of(
        st.sampled_from(["/mnt/x", "/mnt/a'b", "/data/\u00e9", "/mnt/[x]", "/mnt/#x", "/mnt/a: b"]), VALUES)}),
        max_size=2),
    "cloud_init": st.fixed_dictionaries({}, optional={
        "user_data": st.one_of(ANY_TEXT.map(lambda t: "#cloud-config\n" + t), ANY_TEXT, HUGE, st.sampled_from(
            ["#!/bin/sh\n\ud800", "#cloud-config\na: " + "[" * 3000 + "]" * 3000, "#cloud-config\n- a\n",
             "#cloud-config\nssh_authorized_keys: 5\n", "#cloud-config\n{", "#cloud-config\na: !!python/name:os.system"])),
        "hostname": st.one_of(NAMES, ANY_TEXT), "network_config": VALUES,
        "ssh_authorized_keys": st.lists(st.one_of(st.just("ssh-ed25519 " + "A" * 68 + " me"), ANY_TEXT), max_size=2)}),
    "extra": VALUES,
}
SANE = {   # values the site accepts: a hostile field or two among them reaches the prolog's deeper code
    "networks": st.sampled_from([[{"network": n}] for n in ("lan", "shared", "private", "uni", "fabric")] +
                                [[{"network": "shared", "address": "10.3.0.5/24", "gateway": "10.3.0.1"}],
                                 [{"network": "fabric", "mac": "52:54:00:12:34:56"}, {"network": "lan"}]]),
    "cloud_init": st.builds(lambda t, k: {"user_data": t, **k}, st.one_of(
        ANY_TEXT.map(lambda t: "#cloud-config\nruncmd: [" + repr(t) + "]\n"), ANY_TEXT.map(lambda t: "#!/bin/sh\n" + t)),
        st.sampled_from([{}, {"ssh_authorized_keys": ["ssh-ed25519 " + "A" * 68 + " me"]}])),
    "mounts": st.just([{"source": "/srv/data/d", "target": "/mnt/x", "readonly": True}]),
    "volumes": st.just([{"path": "/srv/data/v.img"}]),
    "count": st.integers(1, 3), "memory": st.sampled_from(["64M", "1G"]), "disk": st.sampled_from(["1G", "64M"]),
    "on_timeout": st.just("checkpoint"),
}


@st.composite
def spec_docs(draw) -> dict:
    doc: dict = {"name": "web", "image": "base"}
    for key in draw(st.lists(st.sampled_from(sorted(SANE)), max_size=4, unique=True)):
        doc[key] = draw(SANE[key])
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS) + ["name", "image"]), max_size=2, unique=True)):
        doc[key] = draw(FIELDS.get(key, VALUES))
    return doc


RAW_SPECS = st.sampled_from([
    "name: &n web\nimage: *n\n", "<<: {name: web}\nimage: base\n", "name: !!binary aGVsbG8=\nimage: base\n",
    "name: web\nimage: base\nmemory: !!float 1e400\n", "name: web\nimage: base\ncpus: 0b11\n",
    "name: web\nimage: base\ncpus: 1_000\n", "!!python/object/apply:os.system [id]\n",
    "name: web\nimage: base\ncloud_init: {network_config: &a {x: *a}}\n", "name: web\nimage: base\ndisk: 2012-01-01\n",
    "? [a]\n: b\n", "name: web\n---\nimage: base\n", "%YAML 1.1\n---\nname: web\nimage: base\n",
    "name: web\nimage: base\nmemory: .inf\n", "name: web\nimage: base\nmemory: .nan\n",
    "name: web\nimage: base\ncloud_init: {user_data: !!str 5}\n", "name: web\nimage: base\nname: web\n",
    "name: web\nimage: base\ncloud_init: {network_config: {a: !!set {x}}}\n", "name: web\nimage: base\ncpus: 0o17\n",
    "name: web\nimage: base\ncloud_init: {network_config: {a: 2001-01-01}}\n", "a: " + "[" * 5000 + "]" * 5000,
    "name: web\nimage: base\ncloud_init: {user_data: \"\\uD800\"}\n", "\ufeffname: web\nimage: base\n",
    "name: web\nimage: base\ncloud_init: {network_config: {\"\\uDC00\": 1}}\n", "name: web\x85image: base\n",
])


@st.composite
def spec_texts(draw) -> str:
    """Spec text as a user could write it: YAML of a hostile document, a raw trick, or any text."""
    kind = draw(st.sampled_from(["doc", "doc", "doc", "raw", "raw+doc", "text"]))
    if kind == "text":
        return draw(ANY_TEXT)
    if kind == "raw":
        return draw(RAW_SPECS)
    dumped = yaml.safe_dump(draw(spec_docs()), allow_unicode=draw(st.booleans()), width=draw(st.sampled_from([80, 4096])))
    return dumped + draw(RAW_SPECS) if kind == "raw+doc" else dumped


HOSTILE_COMMENTS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60).map(
        lambda t: "slurm-vm:" + t),
    st.binary(max_size=60).map(lambda b: "slurm-vm:1:z:" + b.replace(b"\0", b"").decode("utf-8", "surrogateescape")),
    st.sampled_from(["slurm-vm:", "slurm-vm:1:", "slurm-vm:1:z:", "slurm-vm:1:z:====", "slurm-vm:2:z:eJw=",
                     "slurm-vm:1:sha256:", "slurm-vm:1:sha256:" + "g" * 64, "slurm-vm:1:z:" + "A" * 1000,
                     "slurm-vm:2:", "slurm-vm:2:" + "g" * 64, "slurm-vm:2:" + "0" * 63, "slurm-vm:3:" + "0" * 64]),
)


# --- the pure property: validate and the planning core ---

def job(n: int = 77) -> JobContext:
    return JobContext(job_id=n, uid=4201, gid=4201, user=USER, node="n1", nodes=("n1",), cluster="c", comment="")


def holding_for(spec) -> Holding:
    """What the cluster-wide allocation would agree for this spec: a VNI per private network, and free
    offsets on each shared network with a subnet."""
    vnis, offsets = {}, {}
    for i, ref in enumerate(spec.networks):
        net = CONFIG.networks[ref.network]
        if net.kind == "vxlan" and net.vni is None:
            vnis[ref.network] = net.vni_range[0]
        if net.subnet and not ref.address and net.vni_range is None:
            plan = network_address_plan(net)
            offsets[(ref.network, i)] = tuple(range(plan.first, plan.first + spec.count))
    return Holding(vnis=vnis, offsets=offsets)


def outcome(text: str | bytes) -> str:
    """"refused" (one-line problems) or "ran" (the prolog's core built the plan, the seed and vm.json)."""
    try:
        spec = parse_spec(text, "fuzz", CONFIG)
        check_user_access(spec, CONFIG, USER, "fuzz")
    except ValidationError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert "\n" not in str(problem) or one_line(str(problem))
        return "refused"
    underlays = {"uni": {"n1": "10.0.0.1"}}
    plan = make_plan(spec, CONFIG, job(), holding_for(spec), underlays)
    seed_plan = plan.seed
    build_seed_iso(seed_plan.meta_data, seed_plan.user_data, seed_plan.network_config, seed_plan.vendor_data)
    volumes = tuple(VolumeInfo(path, 1, i, 1 << 20, "raw") for i, (path, _) in enumerate(plan.volumes))
    VMDefinition.from_json(resolved_definition(plan.definition, volumes).to_json())   # as step_definition does
    return "ran"


class Budget:
    """Seeded batches of a @given test until the time is spent; an example drawn after that returns at once."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.examples = 0

    def spent(self) -> bool:
        if time.monotonic() > self.deadline and self.examples:
            return True
        self.examples += 1
        return False

    def run(self, test) -> None:
        batch = 0
        while batch == 0 or time.monotonic() < self.deadline:
            seed(BASE_SEED + batch)(test)()
            batch += 1
        print(f"{test.__name__}: {self.examples} examples in {batch} batches")


def fuzz(examples: int = BATCH):
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_whatever_validate_accepts_the_prolog_can_build():
    budget = Budget(BUDGET * 0.25)

    @fuzz()
    @given(text=spec_texts(), as_bytes=st.booleans())
    def check(text: str, as_bytes: bool) -> None:
        if not budget.spent():
            outcome(text.encode("utf-8", "surrogatepass") if as_bytes else text)

    budget.run(check)


def test_hostile_comments_are_the_users_fault():
    budget = Budget(2.0)

    @fuzz()
    @given(comment=HOSTILE_COMMENTS)
    def check(comment: str) -> None:
        if budget.spent():
            return
        try:
            text = transport.inline_spec(comment) if not comment.startswith("slurm-vm:1:sha256:") else None
            if text is None:
                transport.comment_digest(comment)
                return
        except TransportError:
            return
        outcome(text)

    budget.run(check)


# --- the real hooks, as root ---

COMMENT_LIMIT = transport.MAX_COMMENT


@pytest.mark.root
def test_real_hooks_never_drain_and_leave_nothing(hook_node):
    node = hook_node
    node.write_config({"mounts": {"allowed": [node.tmp]}})
    jobs = iter(range(2000, 100000))
    protected = {p: os.stat(p) for p in ("/etc/shadow", "/etc/passwd", node.base)}
    budget = Budget(BUDGET * 0.55)

    @fuzz(5)
    @given(text=st.one_of(spec_texts(), st.just("name: web\nimage: base\nnetworks: [{network: lan}]\n")),
           plants=st.lists(st.tuples(st.sampled_from(ROOT_NAMES + ("launcher.pid", "x")), st.sampled_from(PLANTS)),
                           max_size=3, unique_by=lambda p: p[0]),
           comment=st.one_of(st.none(), HOSTILE_COMMENTS))
    def check(text: str, plants, comment) -> None:
        assume(not re.fullmatch(r"slurm-vm:(1:sha256|2):[0-9a-f]{64}", comment or ""))   # needs a real Slurm
        try:
            encoded = transport.legacy_inline_comment(text)   # the spec inline: no Slurm to read a script from
        except UnicodeEncodeError:
            encoded = None   # not a text a user can submit (lone surrogates in the file itself)
        assume(comment is not None or (encoded is not None and len(encoded) <= COMMENT_LIMIT))
        if budget.spent():
            return
        number = next(jobs)
        proc = node.prolog(number, None, comment=comment or encoded)
        assert proc.returncode == 0, proc.stderr
        note = os.path.join(node.state, "jobs", f"{number}.error")
        jdir = os.path.join(node.state, "jobs", str(number))
        if os.path.exists(note):
            assert len(open(note, encoding="utf-8", errors="replace").read().strip().splitlines()) == 1
            assert not os.path.exists(jdir)
        else:
            for name, kind in plants:
                plant(kind, node.base, os.path.join(jdir, name))
        proc = node.epilog(number, None, comment=comment or encoded)
        assert proc.returncode == 0, proc.stderr
        assert node.leftovers(number) == []

    budget.run(check)
    for path, before in protected.items():
        after = os.stat(path)
        assert (after.st_ino, after.st_uid, after.st_size, after.st_mode) == \
            (before.st_ino, before.st_uid, before.st_size, before.st_mode), path
