"""CUDA graphs of the decoder's forward and backward: one launch each instead of thousands.

At the gemma-3-1b-it shape, peftbench's training step waits on the CPU: its 26 decoder layers launch
thousands of kernels forward and backward, and the GPU finishes them faster than Python issues them
(benchmarks/2026-11-25-h100/train_profile.md). A CUDA graph records such a launch sequence once and replays it in one
call. It needs fixed shapes, so in graph mode train.pack pads each packed row with a filler example (pad
tokens outside the loss, attending only to themselves) to a multiple of TOKEN_MULTIPLE tokens, and the
examples' offsets to a fixed count. Each padded length then has its decoder forward and backward captured
the first time it comes, and replayed after: a study meets a few dozen lengths, in thousands of steps.

What stays eager, around the replays: the turn-token embedding rows, the loss over the answer positions
(its size follows the batch), clipping and the optimizer, a few hundred launches in all.

Rules the graphs rely on:
- The backward graph adds into the trained parameters' .grad tensors in place, so those tensors must live
  as long as the graphs: the optimizer zeroes them, never sets them to None (training_step does this;
  __call__ checks it).
- All graphs share one memory pool. Only one runs at a time and none keeps anything alive but its small
  output, so the pool holds the largest length's activations, not the sum over lengths.
- The first capture follows one eager forward and backward (the input's gradient only) that compiles and
  initializes everything; later lengths capture directly, so no eager pass doubles the pool's memory,
  unless a compiled layer would recompile for that length (then it warms up first; see record).

Peak memory: a replay allocates nothing, so torch counts the activations that a forward graph keeps for
its backward only while capturing. max_memory_allocated() below adds them back (DecoderGraphs.peak says how).
"""
import time
import weakref

import torch

TOKEN_MULTIPLE = 256  # padding per packed row: at most 255 tokens, about 3 % of a batch of 8 at the 1B mix


class _Capture:
    """One padded length's graphs and the fixed tensors they read and write."""

    def __init__(self, embeds, position_ids, offsets, longest):
        self.longest = longest  # FlashAttention's bound on an example's length, fixed in the graphs
        self.embeds = embeds.detach().clone().requires_grad_(True)
        self.embeds.grad = torch.zeros_like(self.embeds)
        self.position_ids, self.offsets = position_ids.clone(), offsets.clone()
        self.forward, self.backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        self.hidden = self.grad_hidden = None


class _Replay(torch.autograd.Function):
    """The captured decoder as one autograd node: forward replays one graph, backward the other."""

    @staticmethod
    def forward(ctx, embeds, capture):
        capture.embeds.copy_(embeds)
        capture.forward.replay()
        ctx.capture = capture
        return capture.hidden.detach()

    @staticmethod
    def backward(ctx, grad_hidden):
        capture = ctx.capture
        capture.grad_hidden.copy_(grad_hidden)
        capture.backward.replay()  # also adds the trained weights' gradients into their .grad
        return capture.embeds.grad.clone(), None


class DecoderGraphs:
    """The decoder (lm.model) of a causal LM on packed rows, forward and backward replayed from CUDA graphs
    captured per padded row length. Called with the embedded row, its position ids, the examples' offsets
    and a bound on their length; returns the decoder's last hidden state."""

    def __init__(self, lm, slots):
        self.lm, self.slots = lm, slots  # slots: offsets per row, fixed (train.pack pads to it)
        self.trained = [p for p in lm.model.parameters() if p.requires_grad]
        self.captures, self.grads = {}, []
        self.capture_seconds = []  # per length, warm-up included (the first also compiles the layers)
        self.pool = torch.cuda.graph_pool_handle()
        # Memory: the most a forward graph holds for its backward; torch's peaks folded in before each
        # capture resets them (outside captures: everything but the held activations); peaks in captures.
        self.held_bytes, self.outside = 0, {"allocated": 0, "reserved": 0}
        self.in_captures = {"allocated": 0, "reserved": 0}
        self.replayed = False  # since the last reset: only then do its held activations count
        _LIVE.add(self)

    def decoder(self, capture):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):  # a cache would outlive capture
            return self.lm.model(inputs_embeds=capture.embeds, position_ids=capture.position_ids, use_cache=False,
                                 cu_seq_lens_q=capture.offsets, max_length_q=capture.longest).last_hidden_state

    def warm_up(self, capture):
        """One eager forward and backward of the decoder at this length, outside any capture: compiles (or
        recompiles) the layers and makes lazily allocated buffers. It computes the input's gradient only:
        the weights' would be a second set beside their .grad."""
        hidden = self.decoder(capture)
        torch.autograd.grad(hidden, capture.embeds, torch.ones_like(hidden))

    def record(self, capture, stance="fail_on_recompile"):
        # Compiling inside a capture would break it. A compiled layer that needs another version for this
        # shape fails before it launches anything (fail_on_recompile), and the caller warms up and records
        # again; then any layer that still cannot use a compiled version (Dynamo's recompile limit) runs
        # eagerly in the graph (eager_on_recompile).
        with torch.compiler.set_stance(stance):
            before = torch.cuda.memory_allocated()
            with torch.cuda.graph(capture.forward, pool=self.pool):
                capture.hidden = self.decoder(capture)
            self.held_bytes = max(self.held_bytes, torch.cuda.memory_allocated() - before)
            capture.grad_hidden = torch.empty_like(capture.hidden)
            with torch.cuda.graph(capture.backward, pool=self.pool):
                capture.embeds.grad.zero_()
                torch.autograd.backward(capture.hidden, capture.grad_hidden)

    def capture(self, embeds, position_ids, offsets, longest):
        for weight in self.trained:
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
        self.grads = [weight.grad for weight in self.trained]
        capture = _Capture(embeds, position_ids, offsets, longest)
        if not self.captures:  # the first length
            self.warm_up(capture)
        try:
            self.record(capture)
        except RuntimeError as error:
            if "fail_on_recompile" not in str(error):
                raise
            capture = _Capture(embeds, position_ids, offsets, longest)  # the first graphs hold a partial capture
            self.warm_up(capture)
            self.record(capture, stance="eager_on_recompile")
        return capture

    def __call__(self, embeds, position_ids, offsets, longest):
        """longest: at least the longest example's tokens (attention.length_bound); graphs are captured per
        (row length, longest)."""
        if offsets.numel() != self.slots + 1:
            raise ValueError(f"a graphed row takes {self.slots} examples' offsets, got {offsets.numel() - 1}")
        if any(weight.grad is not grad for weight, grad in zip(self.trained, self.grads)):
            raise RuntimeError("a trained weight's .grad was replaced: the CUDA graphs add into the old one "
                               "(zero gradients in place: optimizer.zero_grad(set_to_none=False))")
        key = embeds.shape[1], longest
        capture = self.captures.get(key)
        if capture is None:
            start = time.perf_counter()
            self.fold_peaks(self.outside)
            capture = self.captures[key] = self.capture(embeds, position_ids, offsets, longest)
            self.fold_peaks(self.in_captures)
            self.capture_seconds.append(time.perf_counter() - start)
        capture.position_ids.copy_(position_ids)
        capture.offsets.copy_(offsets)
        self.replayed = True
        return _Replay.apply(embeds, capture)

    def fold_peaks(self, into):
        """Fold torch's peaks since the last reset into `into`, and reset them."""
        for kind in into:
            into[kind] = max(into[kind], getattr(torch.cuda, f"max_memory_{kind}")())
        torch.cuda.reset_peak_memory_stats()

    def peak(self, kind):
        """Peak bytes (kind "allocated" or "reserved") since reset_peak_memory_stats, counting the graphs' pool.
        Allocated outside captures is an upper bound: the peak of everything else plus the most any forward
        graph holds, as if they coincided (they do on the longest batch, whose loss peaks while its
        activations are held). The pool's reserved memory is counted by torch as it is."""
        outside = max(self.outside[kind], getattr(torch.cuda, f"max_memory_{kind}")())
        held = self.held_bytes if kind == "allocated" and self.replayed else 0
        return max(self.in_captures[kind], outside + held)

    def reset_peaks(self):
        self.outside = {"allocated": 0, "reserved": 0}
        self.in_captures = {"allocated": 0, "reserved": 0}
        self.replayed = False


_LIVE = weakref.WeakSet()  # the graphs alive in this process, for the memory functions below


def max_memory_allocated():
    """torch.cuda.max_memory_allocated(), with the activations that CUDA graphs hold counted (DecoderGraphs.peak)."""
    return max([torch.cuda.max_memory_allocated()] + [graphs.peak("allocated") for graphs in _LIVE])


def max_memory_reserved():
    return max([torch.cuda.max_memory_reserved()] + [graphs.peak("reserved") for graphs in _LIVE])


def reset_peak_memory_stats():
    torch.cuda.reset_peak_memory_stats()
    for graphs in _LIVE:
        graphs.reset_peaks()


ATTRIBUTE = "peftbench_decoder_graphs"


def attach(lm, slots):
    """Train lm's decoder through CUDA graphs from now on (train.answer_loss looks for them here)."""
    setattr(lm, ATTRIBUTE, DecoderGraphs(lm, slots))
    return getattr(lm, ATTRIBUTE)


def attached(lm):
    return getattr(lm, ATTRIBUTE, None)
