"""Cancel points inside a network call (``runtime.interruptible``), standalone and inside ComfyUI."""
import sys
import types

import pytest
import torch
from torch import nn

from consistent_video.nodes.comfy import runtime


def _network() -> nn.Module:
    """Three blocks of two layers each, plus an output layer."""
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3))
    out = nn.Linear(4, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks, self.out = blocks, out

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.out(x)
    return Net()


def _hook_counts(net: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())


def test_no_effect_when_not_cancelled_and_hooks_removed():
    net, x = _network(), torch.randn(5, 4)
    expected = net(x)
    with runtime.interruptible(net):
        assert _hook_counts(net) == 5  # the network, its ModuleList (never called) and the three blocks
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    assert _hook_counts(net) == 0
    runtime.request_interrupt()
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)  # outside the context: no Cancel points
    with pytest.raises(runtime.Interrupted):
        runtime.check_interrupt()  # the request is still pending for the next Cancel point


def test_cancel_stops_before_the_next_block_and_hooks_go_away():
    net, ran = _network(), []
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    net.blocks[0].register_forward_hook(lambda m, a, o: runtime.request_interrupt())
    with pytest.raises(runtime.Interrupted):
        with runtime.interruptible(net):
            net(torch.randn(5, 4))
    assert ran == [0]  # block 1 never ran
    assert sum(len(m._forward_pre_hooks) for m in net.modules()) == 0  # removed although the call raised
    net(torch.randn(5, 4))  # the flag was consumed by the raise: a later call runs through


def test_several_networks_and_nested_contexts():
    a, b = _network(), _network()
    with runtime.interruptible(a, b):
        with runtime.interruptible(a):
            assert _hook_counts(a) == 10 and _hook_counts(b) == 5
        assert _hook_counts(a) == 5
    assert _hook_counts(a) == _hook_counts(b) == 0


def test_inside_comfyui_the_interrupt_is_comfyuis_exception(monkeypatch):
    """With ComfyUI's modules loaded, the check inside the network is ComfyUI's own
    ``throw_exception_if_processing_interrupted`` (so the server reports an interruption)."""
    class InterruptProcessingException(Exception):
        pass

    state = {"interrupted": False, "checks": 0}

    def throw_exception_if_processing_interrupted():
        state["checks"] += 1
        if state["interrupted"]:
            state["interrupted"] = False
            raise InterruptProcessingException()

    mm = types.ModuleType("comfy.model_management")
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "folder_paths", types.ModuleType("folder_paths"))
    net = _network()
    net.blocks[1].register_forward_hook(lambda m, a, o: state.update(interrupted=True))
    ran = []
    net.blocks[2].register_forward_hook(lambda m, a, o: ran.append(2))
    with runtime.interruptible(net):
        with pytest.raises(InterruptProcessingException):
            net(torch.randn(5, 4))
    assert state["checks"] == 4 and not ran  # the network, blocks 0 and 1, then block 2 raised before it ran


class FeedForward(nn.Module):
    """A position-wise layer under the name ``interruptible`` chunks."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_large_feed_forward_runs_in_chunks_with_cancel_points(monkeypatch):
    monkeypatch.setattr(runtime, "FEED_FORWARD_ROWS", 64)
    torch.manual_seed(0)
    ff, x = FeedForward(), torch.randn(3, 50, 8)  # 150 rows: chunks of 64, 64, 22
    expected = ff(x)
    ff.calls = 0
    with runtime.interruptible(ff):
        out = ff(x)
        assert ff.calls == 3
        small = ff(x[:, :10])  # 30 rows: one call
        assert ff.calls == 4
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(small, expected[:, :10], rtol=1e-6, atol=1e-6)
    assert "forward" not in vars(ff)  # the class's forward is back
    ff.calls = 0
    ff.net[0].register_forward_hook(lambda m, a, o: runtime.request_interrupt())
    with pytest.raises(runtime.Interrupted):
        with runtime.interruptible(ff):
            ff(x)
    assert ff.calls == 1  # the second chunk never ran
    assert "forward" not in vars(ff)
