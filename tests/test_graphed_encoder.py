"""GraphedEncoder and GraphedSubnet (orthoasr/graphs.py): padding to shape classes leaves
the real rows' log-probs unchanged (CPU, both backends); on the GPU, one graph per class,
replays that follow their inputs, and agreement with the eager encoder."""

import pytest
import torch
from test_model import tiny_cfg

from orthoasr import set_backend
from orthoasr.export import extract_subnet
from orthoasr.graphs import GraphedEncoder, GraphedSubnet, _padded, capturing
from orthoasr.model import ConformerSupernet

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _model_and_inputs(B, T, seed=0):
    torch.manual_seed(seed)
    model = ConformerSupernet(tiny_cfg()).to(DEV).eval()
    x = torch.randn(B, T, model.cfg.d_model, device=DEV)
    lengths = torch.randint(1, T + 1, (B,), device=DEV)
    lengths[0] = T
    gates = (torch.rand(model.num_units, device=DEV) > 0.4).float()
    return model, x, lengths, gates


def test_shape_classes():
    encoder = GraphedEncoder(None, frame_step=32)
    assert encoder.shape_class(1, 1) == (1, 32)
    assert encoder.shape_class(3, 37) == (4, 64)
    assert encoder.shape_class(32, 64) == (32, 64)
    assert encoder.shape_class(33, 65) == (64, 96)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@torch.no_grad()
def test_padding_leaves_the_rows_unchanged(backend):
    """What a graph of a shape class replays: the padded call's real rows are the unpadded
    call's. Without graphs (the CPU) the call is the unpadded one itself."""
    set_backend(backend)
    model, x, lengths, gates = _model_and_inputs(3, 37)
    encoder = GraphedEncoder(model, use_graphs=False)
    padded = _padded(x, lengths, *encoder.shape_class(3, 37))
    assert padded[0].shape == (4, 64, model.cfg.d_model)
    for g, head in ((gates, 0), (None, -1)):
        expected = model.encode(x, lengths, g, head)
        got = model.encode(*padded, g, head)[:3, :37]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(encoder(x, lengths, g, head), expected)


@torch.no_grad()
def test_without_graphs_the_encoders_run_the_batch_unpadded(monkeypatch):
    """Without graphs (the CPU) nothing is replayed, so padding (3 -> 4 rows, 37 -> 64
    frames) was work for nothing: the encoders see the batch as given."""
    model, x, lengths, gates = _model_and_inputs(3, 37)
    sub, _, _ = _subnet_and_inputs(3, 37)
    seen = []
    for owner in (model, sub):
        encode = owner.encode
        monkeypatch.setattr(owner, "encode", lambda x, *args, encode=encode, **kwargs:
                            seen.append(tuple(x.shape[:2])) or encode(x, *args, **kwargs))
    GraphedEncoder(model, use_graphs=False)(x, lengths, gates, 0)
    GraphedSubnet(sub, use_graphs=False)(x, lengths)
    assert seen == [(3, 37), (3, 37)]


def test_bad_frame_step_is_named():
    for bad in (0, -32, 1.5, True, "32", None):
        with pytest.raises(ValueError, match="frame_step must be an int >= 1, got"):
            GraphedEncoder(None, frame_step=bad)


@torch.no_grad()
def test_empty_batches_give_what_the_model_gives():
    """No sequences (B = 0: no first row to pad with), no frames, every length 0: the
    shape of the unpadded call (CPU: the eager fallback)."""
    model, x, lengths, gates = _model_and_inputs(3, 37)
    encoder = GraphedEncoder(model, use_graphs=False)
    for xs, ls in ((x[:0], lengths[:0]), (x[:, :0], lengths * 0), (x, lengths * 0)):
        got = encoder(xs, ls, gates, 0)
        assert got.shape == model.encode(xs, ls, gates, 0).shape == (*xs.shape[:2], 19)


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_graphs_replay_their_inputs():
    model, x, lengths, gates = _model_and_inputs(5, 70)
    encoder = GraphedEncoder(model)
    first = encoder(x, lengths, gates, 1)
    torch.testing.assert_close(first, model.encode(x, lengths, gates, 1), atol=1e-4, rtol=1e-4)
    _, x2, lengths2, _ = _model_and_inputs(6, 90, seed=1)       # same class (8, 96)
    gates2 = 1 - gates
    second = encoder(x2, lengths2, gates2, 1)
    assert len(encoder.graphs) == 1 and encoder.graphs[next(iter(encoder.graphs))] is not None
    torch.testing.assert_close(second, model.encode(x2, lengths2, gates2, 1), atol=1e-4,
                               rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        encoder(x, lengths, gates, 1)
    assert len(encoder.graphs) == 2                            # autocast: its own graph


def _subnet_and_inputs(B, T, seed=0):
    """An exported subnet of the tiny supernet under random hard gates, and inputs."""
    model, x, lengths, gates = _model_and_inputs(B, T, seed)
    return extract_subnet(model, gates, 1).to(DEV).eval(), x, lengths


@torch.no_grad()
def test_subnet_padding_leaves_the_rows_unchanged():
    sub, x, lengths = _subnet_and_inputs(3, 37)
    encoder = GraphedSubnet(sub, use_graphs=False)
    expected = sub.encode(x, lengths)
    got = sub.encode(*_padded(x, lengths, *encoder.shape_class(3, 37)))[:3, :37]
    assert got.shape == expected.shape == (3, 37, 19)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(encoder(x, lengths), expected)          # no graphs: unpadded
    assert encoder(x[:0], lengths[:0]).shape == (0, 37, 19)
    with pytest.raises(ValueError, match="lengths must be in"):
        encoder(x, lengths + 40)


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_subnet_graphs_replay_their_inputs():
    sub, x, lengths = _subnet_and_inputs(5, 70)
    encoder = GraphedSubnet(sub)
    torch.testing.assert_close(encoder(x, lengths), sub.encode(x, lengths), atol=1e-4,
                               rtol=1e-4)
    _, x2, lengths2 = _subnet_and_inputs(6, 90, seed=1)          # same class (8, 96)
    second = encoder(x2, lengths2)
    assert len(encoder.graphs) == 1 and encoder.graphs[next(iter(encoder.graphs))] is not None
    torch.testing.assert_close(second, sub.encode(x2, lengths2), atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        third = encoder(x, lengths)
        torch.testing.assert_close(third, sub.encode(x, lengths), atol=2e-2, rtol=2e-2)
    assert len(encoder.graphs) == 2                            # autocast: its own graph


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["supernet", "subnet"])
@torch.no_grad()
def test_gpu_graphs_captured_in_an_autocast_cast_at_every_replay(kind):
    """A graph captured inside the caller's bf16 autocast (as the Recognizer and eval call
    it) casts the fp32 weights that autocast casts (the output layer's; every layer of a
    subnet) at each replay: autocast's cache, freed when that autocast exits, is not what
    it reads. A weight changed in place between two autocasts shows in the replay (a graph
    reading the cache would replay the old cast: freed memory, an illegal address once it
    is given back)."""
    if kind == "supernet":
        model, x, lengths, gates = _model_and_inputs(5, 70)
        graphed = GraphedEncoder(model)
        head = model.heads[1]

        def graph_and_eager():
            return graphed(x, lengths, gates, 1), model.encode(x, lengths, gates, 1)
    else:
        model, x, lengths = _subnet_and_inputs(5, 70)
        graphed = GraphedSubnet(model)
        head = model.head

        def graph_and_eager():
            return graphed(x, lengths), model.encode(x, lengths)
    for _ in range(2):        # the capture, then a replay
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got, expected = graph_and_eager()
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
        head.weight.mul_(-2.0)             # outside the autocast: its cache is gone
    assert len(graphed.graphs) == 1 and next(iter(graphed.graphs.values())) is not None


@torch.no_grad()
def test_frozen_weights_keep_their_copies_and_follow_the_weights(monkeypatch):
    """frozen_weights (CPU autocast to fp16, so that the weights need copies): the output of
    copying every pass; the kept copies are the same tensors from call to call and are not
    written while the weights stay; a weight changed in place, or replaced, is copied again,
    so the output follows it."""
    set_backend("auto")
    model, x, lengths, gates = _model_and_inputs(3, 37)
    frozen = GraphedEncoder(model, use_graphs=False, frozen_weights=True)
    plain = GraphedEncoder(model, use_graphs=False)
    writes = []
    foreach_copy = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_",
                        lambda dst, src: writes.append(len(dst)) or foreach_copy(dst, src))

    def outputs():
        with torch.autocast("cpu", dtype=torch.float16):
            return frozen(x, lengths, gates, 0), plain(x, lengths, gates, 0)

    kept, copied = outputs()
    assert torch.equal(kept, copied)
    copies = frozen.operands(model.matmul_weights, torch.float16)
    writes.clear()
    assert torch.equal(outputs()[0], kept)
    assert writes == [len(copies)]                  # the plain pass's copy, not the kept ones
    assert all(a is b for a, b in zip(frozen.operands(model.matmul_weights, torch.float16),
                                      copies, strict=True))
    ffn = model.blocks[0].modules_by_kind["ffn1"]
    ffn.linear1.weight.mul_(1.5)
    kept2, copied2 = outputs()
    assert torch.equal(kept2, copied2) and not torch.equal(kept2, kept)
    old = ffn.linear2.weight
    new = torch.nn.Parameter(old * 0.5)
    while new._version < old._version:      # the same count: only identity tells them apart
        new.mul_(1.0)
    assert new._version == old._version
    ffn.linear2.weight = new
    kept3, copied3 = outputs()
    assert torch.equal(kept3, copied3) and not torch.equal(kept3, kept2)
    with pytest.raises(ValueError, match="changed shape or device"):
        frozen.operands.refresh(model.matmul_weights[1:])


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_frozen_weights_replay_the_current_weights():
    """A graph captured on kept weight copies (bf16 autocast) replays with the weights as
    they are at the replay: a weight changed in place since the capture is copied before."""
    model, x, lengths, gates = _model_and_inputs(5, 70)
    encoder = GraphedEncoder(model, frozen_weights=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = encoder(x, lengths, gates, 1)
        torch.testing.assert_close(first, model.encode(x, lengths, gates, 1), atol=2e-2,
                                   rtol=2e-2)
        model.blocks[1].modules_by_kind["mhsa"].matmul_weights[0].mul_(-1.0)
        second = encoder(x, lengths, gates, 1)
        assert encoder.graphs[next(iter(encoder.graphs))] is not None     # a replay
        torch.testing.assert_close(second, model.encode(x, lengths, gates, 1), atol=2e-2,
                                   rtol=2e-2)
    assert (second - first).abs().max() > 1e-2


@torch.no_grad()
def test_skip_dead_blocks_changes_nothing_outside_a_capture():
    """Eager (CPU here) there is no conditional node to make: the same output."""
    set_backend("auto")
    model, x, lengths, gates = _model_and_inputs(3, 37)
    gates[: model.num_units // 2] = 0                       # block 0 dead
    expected = model.encode(x, lengths, gates, 0)
    got = model.encode(x, lengths, gates, 0, skip_dead_blocks=True)
    assert torch.equal(got, expected)


def test_if_any_nonzero_names_bad_gates():
    from orthoasr.conditional import if_any_nonzero
    for bad in (torch.ones(2, 3), torch.ones(4, dtype=torch.float64), torch.ones(8)[::2]):
        with pytest.raises(ValueError, match="gates must be a contiguous 1-d float32"):
            if_any_nonzero(bad, lambda: None, lambda out: None)
    with pytest.raises(RuntimeError, match="while the current stream captures"):
        if_any_nonzero(torch.ones(3), lambda: None, lambda out: None)


@pytest.mark.gpu
def test_gpu_if_any_nonzero_takes_the_branch_the_gates_pick():
    """Two branches that write different values: each replay runs the one its gates pick,
    with allocations inside the branch and work after the node on the capturing stream."""
    pytest.importorskip("cuda.bindings")      # the `graphs` extra
    from orthoasr.conditional import if_any_nonzero
    from orthoasr.graphs import capture_graph
    x = torch.randn(1000, device="cuda")
    gates = torch.zeros(5, device="cuda")

    def fn():
        out = if_any_nonzero(gates, lambda: x * 2 + 1, lambda out: out.fill_(-3.0))
        return out - 1

    graph, result = capture_graph(fn, warmup=0)
    for value, expected in ((0.0, torch.full_like(x, -4.0)), (0.5, x * 2),
                            (0.0, torch.full_like(x, -4.0)), (-1e-30, x * 2)):
        gates[3] = value
        graph.replay()
        torch.testing.assert_close(result, expected, atol=1e-6, rtol=1e-6)


def _conditional_nodes(graph) -> int:
    """How many conditional nodes a captured torch CUDA graph holds at its top level."""
    from cuda.bindings import runtime
    raw = runtime.cudaGraph_t(graph.raw_cuda_graph())
    _, _, count = runtime.cudaGraphGetNodes(raw)
    _, nodes, _ = runtime.cudaGraphGetNodes(raw, count)
    kinds = [runtime.cudaGraphNodeGetType(node)[1] for node in nodes]
    return sum(kind == runtime.cudaGraphNodeType.cudaGraphNodeTypeConditional
               for kind in kinds)


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("batch_streams", [1, 2])
@torch.no_grad()
def test_gpu_dead_blocks_skipped_on_the_device(autocast, batch_streams):
    """One graph with an IF node a block (a chain of them on each of `batch_streams`
    streams), replayed under gates that kill no block, one block, every block: each replay
    equals the eager encoder under the same gates."""
    pytest.importorskip("cuda.bindings")      # the `graphs` extra
    set_backend("auto")
    model, x, lengths, gates = _model_and_inputs(5, 70)
    per_block = model.num_units // len(model.blocks)
    patterns = [torch.ones_like(gates), gates.clone(), gates.clone(), torch.zeros_like(gates)]
    patterns[1][:per_block] = 0                     # block 0 dead, block 1 partly live
    patterns[2][per_block:] = 0                     # the last block dead
    encoder = GraphedEncoder(model, skip_dead_blocks=True, batch_streams=batch_streams)
    tol = 2e-2 if autocast else 1e-5
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for g in patterns:
            got = encoder(x, lengths, g, 1)
            torch.testing.assert_close(got, model.encode(x, lengths, g, 1), atol=tol, rtol=tol)
    assert len(encoder.graphs) == 1
    model.encode(x, lengths, gates, 1)                  # compiles what the capture runs
    kept = torch.cuda.CUDAGraph(keep_graph=True)        # a capture whose nodes can be read
    with capturing(kept):
        model.encode(x, lengths, gates, 1, skip_dead_blocks=True)
    assert _conditional_nodes(kept) == len(model.blocks)


@torch.no_grad()
def test_batch_streams_change_nothing_outside_a_capture():
    """Eager (CPU here) the batch is not split: the same output; bad values are named."""
    set_backend("auto")
    model, x, lengths, gates = _model_and_inputs(3, 37)
    expected = model.encode(x, lengths, gates, 0)
    assert torch.equal(model.encode(x, lengths, gates, 0, batch_streams=2), expected)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="batch_streams must be an int >= 1"):
            model.encode(x, lengths, gates, 0, batch_streams=bad)
        with pytest.raises(ValueError, match="batch_streams must be an int >= 1"):
            GraphedEncoder(model, batch_streams=bad)


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True])
@torch.no_grad()
def test_gpu_batch_streams_give_the_one_stream_output(autocast, monkeypatch):
    """Captured with the batch split over 2, 3 and (more groups than sequences) 5 streams,
    each replay equals the capture of one chain, with and without gates; the split is made
    in the capture only, with the groups asked for (at most one a sequence), also with
    skip_dead_blocks."""
    import orthoasr.model
    from orthoasr.graphs import capture_graph
    set_backend("auto")
    model, x, lengths, gates = _model_and_inputs(5, 70)
    splits = []

    def recorded(x, lengths, groups, run):
        splits.append(groups)
        return over_streams(x, lengths, groups, run)
    over_streams = orthoasr.model.over_streams
    monkeypatch.setattr(orthoasr.model, "over_streams", recorded)
    tol = 2e-2 if autocast else 1e-5
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for g in (None, gates):
            before = len(splits)
            model.encode(x, lengths, g, 1, batch_streams=2)      # eager: no split
            assert len(splits) == before
            one_graph, one = capture_graph(lambda g=g: model.encode(x, lengths, g, 1))
            one_graph.replay()
            for streams in (2, 3, 9):
                graph, got = capture_graph(
                    lambda g=g, s=streams: model.encode(x, lengths, g, 1, batch_streams=s))
                got.zero_()
                graph.replay()
                torch.testing.assert_close(got, one, atol=tol, rtol=tol)
                assert splits[-1] == min(streams, x.shape[0])
    try:
        import cuda.bindings  # noqa: F401  (the `graphs` extra, for IF nodes)
    except ImportError:
        return
    before = len(splits)              # with IF nodes too (test_gpu_dead_blocks_...: values)
    capture_graph(lambda: model.encode(x, lengths, gates, 1, skip_dead_blocks=True,
                                       batch_streams=2))
    assert splits[before:] == [2]


def _fake_stream_pool(monkeypatch, size: int = 4):
    """torch.cuda.Stream replaced by a fake whose CUDA handles cycle through a pool of
    `size`, round robin as torch's own pool does (on the CPU), and no side stream kept yet.
    Returns the fake class."""
    import itertools

    import orthoasr.kernels.common as common

    class FakeStream:
        pool = itertools.cycle(range(size))

        def __init__(self, index=None):
            self.cuda_stream = next(FakeStream.pool)
            self.device = torch.device("cuda", 0)

    monkeypatch.setattr(common.torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(common, "_side_streams", {})
    return FakeStream


def test_kept_side_streams_are_never_the_same_cuda_stream(monkeypatch):
    """torch's streams come from a pool, round robin, so a stream asked for later may be one
    already kept. side_stream keeps one stream a key, never another key's nor one the
    caller avoids (a fake pool of 4 here, on the CPU): the same key gives the same stream
    until the caller must avoid it, and a pool with nothing left is named."""
    import orthoasr.kernels.common as common

    FakeStream = _fake_stream_pool(monkeypatch)
    device = torch.device("cuda", 0)
    capturing = FakeStream()                                        # handle 0
    branches = common.side_stream(device, ("IF branches", 0), avoid=(capturing,))
    group = common.side_stream(device, ("batch group", 1), avoid=(capturing,))
    copies = common.side_stream(device, "staged copies")
    handles = [capturing.cuda_stream, branches.cuda_stream, group.cuda_stream]
    assert len(set(handles)) == 3 and copies.cuda_stream not in handles[1:]
    assert common.side_stream(device, ("batch group", 1)) is group
    moved = common.side_stream(device, ("batch group", 1), avoid=(group,))
    assert moved.cuda_stream not in (group.cuda_stream, branches.cuda_stream,
                                     copies.cuda_stream)
    common.side_stream(device, "the pool's last")                 # 4 kept: a pool of 4
    with pytest.raises(RuntimeError, match="every stream torch's pool gave is taken"):
        common.side_stream(device, "one too many")


def test_if_branches_are_never_captured_on_a_capturing_stream(monkeypatch):
    """The IF branches' side stream is never one that captures now (here the pool's next
    stream is a second stream of the capture under way, as the fork of a batch group
    would be): it is drawn again (fakes of torch's pool and the CUDA runtime, on the
    CPU)."""
    from types import SimpleNamespace

    import orthoasr.conditional as conditional

    FakeStream = _fake_stream_pool(monkeypatch)
    capturing_now = {0, 1}                         # the capture's stream and a fork of it
    status = SimpleNamespace(cudaStreamCaptureStatusNone=0, cudaStreamCaptureStatusActive=1)
    runtime = SimpleNamespace(
        cudaStreamCaptureStatus=status,
        cudaStreamIsCapturing=lambda handle: (0, int(handle in capturing_now)))
    capturing = FakeStream()                                        # handle 0
    side = conditional._branch_stream(capturing, runtime)
    assert side.cuda_stream not in capturing_now
    assert conditional._branch_stream(capturing, runtime) is side


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_if_branches_avoid_the_capturing_stream_and_capture_again(monkeypatch):
    """A kept IF-branch stream that torch's pool has since handed out again as the capture's
    own stream (forced here: the alias kept under the capturing stream's key) is drawn
    anew, so the branches' captures begin; then the same pass captured three times in a
    row (bench_floor's captures=3 failed so on 4c0da3e). Every replay equals the eager
    encoder under gates that kill one block."""
    pytest.importorskip("cuda.bindings")      # the `graphs` extra
    import orthoasr.kernels.common as common
    from orthoasr.graphs import capture_graph
    set_backend("auto")
    model, x, lengths, gates = _model_and_inputs(3, 40)
    gates[:model.num_units // len(model.blocks)] = 0              # block 0 dead
    expected = model.encode(x, lengths, gates, 1)

    def run():
        return model.encode(x, lengths, gates, 1, skip_dead_blocks=True)

    run()                                                     # compiles what the capture runs
    capture = torch.cuda.Stream()
    monkeypatch.setattr(common, "_side_streams", {
        **common._side_streams,
        (capture.device.index, ("IF branches", capture.cuda_stream)): capture})
    graph = torch.cuda.CUDAGraph()
    capture.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
        out = run()
    graph.replay()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for _ in range(3):
        again, out = capture_graph(run)
        again.replay()
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
