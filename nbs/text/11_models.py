# %% [markdown]
# # Models
#
# > The spiking convolutional networks of the experiments: a small SCNN for digits, MNIST and Fashion-MNIST, and the PSN paper's CIFAR network, each with AMOS LIF neurons and a decoder from chapter 9.

# %% [markdown]
# After this chapter you can build the paper's networks with AMOS LIF neurons (or SpikingJelly's as baselines), count their spikes, and stop inference at each sample's decision.

# %%
#| default_exp models

# %%
#| export
import torch
from torch import nn, Tensor
from pttfs.neuron import AMOSLIF
from collections import namedtuple
from pttfs.decoders import DECODERS, TemporalSelectorDecoder, select_time
from pttfs.data import DATASETS, direct_encode
from pttfs.surrogate import Sigmoid, ATan

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from pttfs.dynamics import diff_bucket


# %% [markdown]
# Stateless layers (convolution, batch norm, pooling, linear) see the time steps as extra batch: `[T, B, ...]` is
# folded to `[T·B, ...]` around them. Batch norm therefore normalises over time and batch together, as in
# SpikingJelly's multi-step mode.

# %%
#| export
class SequenceWise(nn.Module):
    "Apply stateless layers to [T, B, ...] by folding time into the batch."
    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)
    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[:2]
        y = self.layers(x.flatten(0, 1))
        return y.view(T, B, *y.shape[1:])


# %% [markdown]
# Each block of the networks below ends in a 2×2 average pooling of spikes. `nn.AvgPool2d(2)` computes it with a
# general window loop, which on a CPU takes several times as long as reading its input once. The window is fixed, so
# we can write it as two additions of strided views, along the rows and then along the columns, and the backward as
# one broadcast of $g/4$ (each input pixel receives a quarter of its window's gradient). On spikes, in {0, 1}, every
# sum is a small whole number and multiplying by 1/4 is exact, so the output is `nn.AvgPool2d(2)`'s bit for bit; the
# gradient is the same product $g \cdot 1/4$, also exact. (On other inputs the pairwise sums may round differently
# in the last bit.)

# %%
#| export
class _Pool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        pairs = x.view(B, C, H, W // 2, 2)
        rows = (pairs[..., 0] + pairs[..., 1]).view(B, C, H // 2, 2, W // 2)      # [B, C, H, W/2]: column pairs summed
        return (rows[:, :, :, 0] + rows[:, :, :, 1]).mul_(0.25)                      # then row pairs: the window's mean
    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        B, C, h, w = grad.shape
        return (grad * 0.25)[:, :, :, None, :, None].expand(B, C, h, 2, w, 2).reshape(B, C, 2 * h, 2 * w)


class AvgPool2x2(nn.Module):
    "`nn.AvgPool2d(2)` for even heights and widths, as two strided additions (bit for bit on spikes); odd sizes go to it."
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2 or not x.is_contiguous(): return nn.functional.avg_pool2d(x, 2)
        return _Pool2x2.apply(x)


# %% [markdown]
# Checked against `nn.AvgPool2d(2)` on spikes in float32 and bfloat16, forward and gradient, and on an odd size
# (which takes `nn.AvgPool2d`'s path):

# %%
torch.manual_seed(0)
rows = []
for dtype in (torch.float32, torch.bfloat16):
    for shape in [(8, 4, 28, 28), (8, 4, 7, 7)]:
        spikes = (torch.rand(shape) > 0.7).to(dtype).requires_grad_()
        grad = torch.randn(8, 4, shape[2] // 2, shape[3] // 2).to(dtype)
        ours, torchs = AvgPool2x2()(spikes), nn.AvgPool2d(2)(spikes)
        (ours_grad,), (torch_grad,) = torch.autograd.grad(ours, spikes, grad), torch.autograd.grad(torchs, spikes, grad)
        ours, torchs = ours.detach(), torchs.detach()
        test_eq((torch.equal(ours, torchs), torch.equal(ours_grad, torch_grad)), (True, True))   # bit for bit
        rows.append(f"{str(dtype)[6:]:9} {str(shape):15} output {diff_bucket(ours.float(), torchs.float())}, gradient {diff_bucket(ours_grad.float(), torch_grad.float())}")
print('\n'.join(rows))


# %% [markdown]
# ## The SCNN for small images
#
# Two `Conv3×3 → BN → AMOS LIF → AvgPool(2)` blocks (C and 2C channels), then `Linear → AMOS LIF` to a hidden
# layer of `hidden` neurons, whose spikes go to the decoder. For 28×28 inputs the feature map before the linear
# layer is 2C×7×7; for digits' 8×8 it is 2C×2×2.
#
# With `convs_per_block=2` each block has two `Conv → BN → AMOS LIF` layers before its pooling, in the VGG style:
# six neuron layers instead of three. This is our Fashion-MNIST network (chapter 13). The paper's SCNN⁵ for MNIST
# and Fashion-MNIST is defined in its supplement, which we do not have, so the two may differ.

# %%
#| export
def scnn_body(in_channels: int, size: int, neuron, channels: int = 32, hidden: int = 256,
              convs_per_block: int = 1,  # Conv-BN-neuron layers before each pooling (2: a VGG-style block)
             ) -> nn.Sequential:
    "The small SCNN up to its last hidden spiking layer (`hidden` neurons); `neuron()` makes each neuron layer."
    layers, width = [], in_channels
    for C in (channels, 2 * channels):                  # two blocks, the second twice as wide, each ending in a pooling
        for _ in range(convs_per_block):
            layers += [SequenceWise(nn.Conv2d(width, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)), neuron()]
            width = C
        layers.append(SequenceWise(AvgPool2x2()))
    layers += [SequenceWise(nn.Flatten(), nn.Linear(width * (size // 4) ** 2, hidden)), neuron()]
    return nn.Sequential(*layers)


def cifar_body(neuron, channels: int = 256) -> nn.Sequential:
    "The PSN paper's CIFAR network up to its last hidden spiking layer (C·16 neurons): {Conv-BN-neuron}×3, AvgPool, twice."
    C, layers, in_channels = channels, [], 3
    for _ in range(2):
        for _ in range(3):
            layers += [SequenceWise(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)), neuron()]
            in_channels = C
        layers.append(SequenceWise(AvgPool2x2()))
    layers += [SequenceWise(nn.Flatten(), nn.Linear(C * 64, C * 16)), neuron()]
    return nn.Sequential(*layers)


def cifar_net(neuron, channels: int = 256, classes: int = 10) -> nn.Sequential:
    "The CIFAR network with a plain linear read-out (as in the PSN paper's speed benchmark)."
    return nn.Sequential(*cifar_body(neuron, channels), SequenceWise(nn.Linear(channels * 16, classes)))


# %% [markdown]
# ## Baselines: the same body with SpikingJelly's LIF or PSN neurons
#
# Table 3 of the paper compares AMOS LIF with two multi-spike neurons, LIF and the parallel spiking neuron (PSN), in
# the same network. `SpikingJellyNeuron` puts SpikingJelly's own `LIFNode` or `PSN` where an `AMOSLIF` layer would
# be. Two details make it a drop-in:
#
# - SpikingJelly's LIF keeps its membrane between calls until `functional.reset_net`. Every call here is a new
#   sequence, as it is for `AMOSLIF`, so the layer resets the neuron first.
# - A PSN layer's weights are a T×T matrix, so it is built for one T and refuses any other.
#
# LIF comes in two configurations. `'lif'` is SpikingJelly's `LIFNode` with its defaults: a hard reset to 0 after a
# spike, kept in the autograd graph. `'lif-psnpaper'` is the LIF the PSN paper's code trains: `v_reset=None` (a soft
# reset, the threshold subtracted from the membrane) and `detach_reset=True` (no gradient through the reset). Both
# take the surrogate named by `surrogate`; the PSN paper uses ATan.
#
# The baselines fire many times, so they cannot use a first-spike decoder. They read out as the PSN paper does: a
# plain linear layer on the last hidden spikes, averaged over the T steps (`RateReadout`). The decision step is then
# always T−1.
#
# SpikingJelly is optional (`pip install "pttfs[baselines]"`). Without it, asking for a baseline says which extra to
# install.

# %%
#| export
NEURONS = ('amos', 'lif', 'lif-psnpaper', 'psn')
SURROGATES = {'sigmoid': Sigmoid, 'atan': ATan}


class SpikingJellyNeuron(nn.Module):
    "SpikingJelly's LIF or PSN as a baseline neuron layer: spikes for multi-step input [T, B, ...], a new sequence every call."
    def __init__(self, kind: str,  # 'lif', 'lif-psnpaper' or 'psn'
                 T: int = None,  # PSN only: the one T it is built for (its weights are T×T)
                 tau: float = 2.0,  # LIF only: the membrane time constant
                 surrogate: str = 'sigmoid',  # a name in SURROGATES (SpikingJelly's function of that name)
                ):
        super().__init__()
        try: from spikingjelly.activation_based import neuron, surrogate as sj_surrogate
        except ImportError:
            raise ImportError(f"the {kind} baseline needs SpikingJelly: pip install \"pttfs[baselines]\"") from None
        if surrogate not in SURROGATES: raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
        function = {'sigmoid': sj_surrogate.Sigmoid, 'atan': sj_surrogate.ATan}[surrogate]()   # same α as ours: 4 and 2
        if kind == 'lif': self.neuron = neuron.LIFNode(tau=float(tau), surrogate_function=function, step_mode='m')
        elif kind == 'lif-psnpaper':     # as the PSN paper's code builds its LIF: soft reset (V - V_th), reset off the graph
            self.neuron = neuron.LIFNode(tau=float(tau), surrogate_function=function, v_reset=None, detach_reset=True, step_mode='m')
        elif kind == 'psn':
            if not isinstance(T, int) or T < 1: raise ValueError(f"a PSN layer needs its T (a positive int), got {T!r}")
            self.neuron = neuron.PSN(T=T, surrogate_function=function)
        else: raise ValueError(f"kind must be 'lif', 'lif-psnpaper' or 'psn', got {kind!r}")
        self.kind, self.T = kind, T

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == 'psn' and x.shape[0] != self.T:
            raise ValueError(f"this PSN layer was built for T={self.T} (its weights are T×T); got {x.shape[0]} steps")
        if self.kind != 'psn': self.neuron.reset()                  # a new sequence, as with AMOSLIF
        return self.neuron(x)


class RateReadout(nn.Module):
    "The baselines' read-out, as in the PSN paper: a linear layer on the last hidden spikes, averaged over T; decides at T-1."
    def __init__(self, in_features: int, classes: int):
        super().__init__()
        self.synapse = nn.Linear(in_features, classes)

    def forward(self, x: Tensor) -> tuple:  # x: [T, B, F] -> (logits [B, K], decision step [B])
        return self.synapse(x).mean(0), torch.full((x.shape[1],), x.shape[0] - 1, dtype=torch.long, device=x.device)


NEURON_LAYERS = (AMOSLIF, SpikingJellyNeuron)   # what spike counts and the energy estimate look for

# %% [markdown]
# Checked: a LIF layer gives the same spikes for the same input on a second call (its state was reset), a PSN layer
# refuses a T it was not built for, and a baseline network decides at T−1:

# %%
torch.manual_seed(0)
x = torch.randn(4, 3, 16) * 2
lif = SpikingJellyNeuron('lif')
test_eq(lif(x), lif(x))                                                   # no state carried over
print(f"LIF: {int(lif(x).sum())} spikes from {x[0].numel()} neurons over 4 steps (AMOS LIF allows at most one each)")
test_fail(lambda: SpikingJellyNeuron('psn', T=4)(x[:2]), exc=ValueError, contains='T=4')
test_fail(lambda: SpikingJellyNeuron('izhikevich'), exc=ValueError, contains="'lif', 'lif-psnpaper' or 'psn'")
soft = SpikingJellyNeuron('lif-psnpaper')
test_eq(soft(x), soft(x))
def soft_reset_lif(x, tau=2.0):
    "The soft-reset LIF by hand: charge H = V + (X - V)/tau, spike where H >= 1, then subtract the threshold."
    v, spikes = torch.zeros_like(x[0]), []
    for xt in x:
        h = v + (xt - v) / tau
        s = (h >= 1).float(); spikes.append(s); v = h - s
    return torch.stack(spikes)
test_eq(soft(x), soft_reset_lif(x))
print(f"LIF as the PSN paper configures it (soft reset): {int(soft(x).sum())} spikes")
readout = RateReadout(16, 10)
logits, decision = readout((x > 0).float())
test_eq(logits.shape, (3, 10)); test_eq(decision.tolist(), [3, 3, 3])


# %% [markdown]
# ## A classifier: body, decoder, spike counts

# %%
#| export
def check_exits_early(body: nn.Module):
    "Refuse a body that early exit cannot run step by step: a temporal layer other than `AMOSLIF` keeps state it would not carry."
    for name, m in body.named_modules():
        stateful = isinstance(m, SpikingJellyNeuron) or any(k.__name__ == 'MemoryModule' for k in type(m).__mro__)
        if stateful and not isinstance(m, AMOSLIF):
            raise ValueError(f"early exit runs the network a step at a time and carries only AMOSLIF's state; layer "
                             f"{name!r} ({type(m).__name__}) keeps its own, so its steps would differ: use early_exit=False")


# %%
#| export
Prediction = namedtuple('Prediction', 'logits t_first steps_computed')


# %%
#| export
class SpikingClassifier(nn.Module):
    "Direct encoding over T steps, a spiking body, a decoder: images [B, ...] -> (logits [B, K], decision step [B])."
    def __init__(self, body: nn.Sequential, decoder: nn.Module):
        super().__init__()
        self.body, self.decoder = body, decoder

    def forward(self, images: Tensor, T: int) -> tuple:
        return self.decoder(self.body(direct_encode(images, T)))

    @torch.no_grad()
    def predict(self, images: Tensor,  # [B, C, H, W]
                T: int,  # the time steps available
                early_exit: bool = True,  # stop each sample at its TSD decision (TSD only; eval mode)
                chunk: int = 1,  # steps computed per pass when exiting early
               ):  # Prediction(logits [B, K], t_first [B], steps_computed [B])
        "Logits and decision steps; with `early_exit`, each sample is computed only up to its decision (see below)."
        if not isinstance(T, int) or T < 1: raise ValueError(f"T must be a positive int, got {T!r}")
        if not early_exit:
            logits, decision = self(images, T)
            return Prediction(logits, decision, torch.full_like(decision, T))
        if not isinstance(self.decoder, TemporalSelectorDecoder):
            raise ValueError(f"{type(self.decoder).__name__} reads all T steps before it decides, so it cannot exit early "
                             f"(only the temporal selector decoder can); use early_exit=False")
        if self.training: raise ValueError("early exit is exact in eval mode only (training-mode batch norm mixes samples and steps): call .eval()")
        if not isinstance(chunk, int) or chunk < 1: raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        check_exits_early(self.body)
        neurons = [m for m in self.modules() if isinstance(m, AMOSLIF)]
        modes = [(m.step_mode, m.stateful, m.sequence_length) for m in neurons]
        B = images.shape[0]
        logits, decision = None, torch.full((B,), T - 1, dtype=torch.long, device=images.device)
        steps = torch.zeros(B, dtype=torch.long, device=images.device)
        active = torch.arange(B, device=images.device)           # the samples still undecided
        try:
            for m in neurons:        # carried state; Eq. 7's forced spike (force_last) comes at step T-1 of T
                m.step_mode, m.stateful, m.sequence_length = 'm', True, T; m.reset()
            start = 0
            while start < T and len(active):
                k = min(chunk, T - start)
                spikes, membrane = self.decoder.outputs(self.body(direct_encode(images[active], k)))   # [k, b, K]
                if logits is None: logits = membrane.new_zeros(B, membrane.shape[-1])
                steps[active] += k
                fired = spikes.amax(dim=-1) > 0                                  # [k, b]: any output spike
                last = start + k == T
                done = fired.any(dim=0) | last                                  # decided now, or out of time
                local = torch.where(fired.any(dim=0), fired.to(torch.uint8).argmax(dim=0), torch.full_like(active, k - 1))
                logits[active[done]] = select_time(membrane[:, done], local[done])    # the TSD: membranes at t_1st
                decision[active[done]] = start + local[done]
                active = active[~done]
                for m in neurons: m.select_state(~done)                         # decided samples leave the batch
                start += k
        finally:
            for m, (mode, stateful, length) in zip(neurons, modes):
                m.step_mode, m.stateful, m.sequence_length = mode, stateful, length; m.reset()
        return Prediction(logits, decision, steps)


# %%
#| export
def build_model(dataset: str = 'digits',  # a name in DATASETS
                architecture: str = 'scnn',  # 'scnn' or 'cifar'
                decoder: str = 'tsd',  # a name in DECODERS (baselines: 'rate', read out as the PSN paper does)
                channels: int = None,  # C (default: 32 for the SCNN, 256 for the CIFAR net)
                hidden: int = 256,  # SCNN: neurons of the last hidden layer
                tau: float = 2.0,  # initial τ of every neuron
                decoder_threshold: float = 1.0,  # the decoder's confidence parameter
                backend: str = 'auto',
                convs_per_block: int = 1,  # SCNN: convolutions per block (see scnn_body)
                neuron: str = 'amos',  # a name in NEURONS: AMOS LIF, or a SpikingJelly baseline in the hidden layers
                T: int = None,  # the one T of a PSN network
                surrogate: str = 'sigmoid',  # a name in SURROGATES, for every neuron
                output_force_last: bool = False,  # Eq. 7 in the output layer only
               ) -> SpikingClassifier:
    "The network for a dataset: AMOS LIF neurons (or a baseline's) everywhere, the chosen decoder on top."
    info = DATASETS[dataset]
    if decoder not in DECODERS: raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if neuron not in NEURONS: raise ValueError(f"neuron must be one of {', '.join(NEURONS)}, got {neuron!r}")
    if surrogate not in SURROGATES: raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
    if neuron != 'amos' and decoder != 'rate':
        raise ValueError(f"the {neuron} baseline fires many times, so it decodes by rate: use decoder='rate', not {decoder!r}")
    if neuron == 'amos': make_neuron = lambda: AMOSLIF(tau=tau, surrogate=SURROGATES[surrogate](), backend=backend, step_mode='m')
    else: make_neuron = lambda: SpikingJellyNeuron(neuron, T=T, tau=tau, surrogate=surrogate)
    if architecture == 'scnn':
        body = scnn_body(info['channels'], info['size'], make_neuron, channels or 32, hidden, convs_per_block)
        features = hidden
    elif architecture == 'cifar':
        if info['size'] != 32: raise ValueError(f"the CIFAR network needs 32x32 images; {dataset} has {info['size']}x{info['size']}")
        body = cifar_body(make_neuron, channels or 256)
        features = (channels or 256) * 16
    else: raise ValueError(f"architecture must be 'scnn' or 'cifar', got {architecture!r}")
    if neuron != 'amos': return SpikingClassifier(body, RateReadout(features, info['classes']))
    return SpikingClassifier(body, DECODERS[decoder](features, info['classes'], tau=tau, v_threshold=decoder_threshold,
                                                     surrogate=SURROGATES[surrogate](), backend=backend,
                                                     force_last=output_force_last))


def spike_recorder(model: nn.Module,  # any network with neuron layers (NEURON_LAYERS)
                   per_step: list,  # receives (layer name, spikes summed over all but [steps, samples]) per layer call
                  ) -> list:  # the hooks: remove them when done
    "Forward hooks on every neuron layer that record its spikes per step and sample (Table 3's input)."
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, NEURON_LAYERS):
            def hook(module, inputs, output, name=name):
                spikes = output[0] if isinstance(output, tuple) else output
                per_step.append((name, spikes.detach().flatten(2).float().sum(2)))   # [steps, samples]
            hooks.append(module.register_forward_hook(hook))
    return hooks


# %% [markdown]
# Shapes and sizes. The CIFAR network at the paper's width, C = 256, has 70.11M parameters with the TSD for ten
# classes; the paper states 68.93M. Its exact layers are not given, and we have not found the cause of the
# difference. The Fashion-MNIST network (`convs_per_block=2`) is listed too:

# %%
torch.manual_seed(0)
for dataset, architecture, channels, per_block in [('digits', 'scnn', None, 1), ('mnist', 'scnn', None, 1),
                                                   ('fashion-mnist', 'scnn', None, 2), ('cifar10', 'cifar', 256, 1)]:
    model = build_model(dataset, architecture, channels=channels, convs_per_block=per_block)
    print(f"{dataset:13} {architecture:5} C={channels or 32:3}, {per_block} conv/block: "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:7.3f}M parameters")
small = build_model('cifar10', 'cifar', channels=4)
logits, t = small(torch.randn(2, 3, 32, 32), T=3)
test_eq(logits.shape, (2, 10)); test_eq(t.shape, (2,))

# %% [markdown]
# The Fashion-MNIST network (two convolutions per block) drawn from the module itself: every stage of the body, top
# to bottom, with the shape it outputs for one image at T = 4, measured with forward hooks. Time stays the leading
# dimension throughout; the neurons (red) are the only layers that look along it.

# %%
#| fig-cap: The Fashion-MNIST network, stage by stage, with the shape each outputs for one image at T = 4: time stays the leading dimension, and only the neurons (red) look along it.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
def describe_layer(module) -> str:
    "A short name for one stage of the body: the layers it wraps, in order."
    parts = []
    for layer in (module.layers if hasattr(module, 'layers') else [module]):
        if isinstance(layer, nn.Conv2d): parts.append(f"Conv {layer.kernel_size[0]}×{layer.kernel_size[1]}, {layer.in_channels}→{layer.out_channels}")
        elif isinstance(layer, nn.BatchNorm2d): parts.append("BN")
        elif isinstance(layer, nn.Linear): parts.append(f"Linear {layer.in_features}→{layer.out_features}")
        elif isinstance(layer, nn.Flatten): parts.append("Flatten")
        elif isinstance(layer, AMOSLIF): parts.append("AMOS LIF")
        else: parts.append(type(layer).__name__)
    return ' + '.join(parts)

def draw_network(model, T: int = 4, image_shape=(1, 28, 28)):
    "Every stage of `model.body` and the decoder, top to bottom, with the shape each one outputs for one image."
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple((o[0] if isinstance(o, tuple) else o).shape)))
             for m in list(model.body) + [model.decoder.synapse]]
    with torch.no_grad(): model.eval()(torch.zeros(1, *image_shape), T)
    for h in hooks: h.remove()
    stages = [describe_layer(m) for m in model.body] + [f"decoder: {describe_layer(model.decoder.synapse)}, AMOS LIF, "
                                                        f"{type(model.decoder).__name__}"]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(stages) + 0.6))
    for k, (text, shape) in enumerate(zip(stages, shapes)):
        spiking = text == 'AMOS LIF'
        ax.text(0, -k, text, ha='center', va='center', fontsize=8.5,
                bbox=dict(boxstyle='round,pad=0.3', facecolor='#f8e1dc' if spiking else '#dbe8f5', edgecolor='#555'))
        ax.text(0.62, -k, '[' + ', '.join(map(str, shape)) + ']', va='center', fontsize=8, family='monospace', color='#555')
        if k: ax.annotate('', xy=(0, -k + 0.3), xytext=(0, -k + 0.7), arrowprops=dict(arrowstyle='->', color='#777'))
    ax.text(0.62, 0.8, 'output [T, B, ...]', fontsize=8, color='#555')
    ax.set_xlim(-0.75, 1.1); ax.set_ylim(-len(stages) + 0.4, 1.2); ax.axis('off')
    return fig

torch.manual_seed(0)
draw_network(build_model('fashion-mnist', convs_per_block=2));


# %% [markdown]
# Spike counts per layer, on request (the evaluation reports spikes per sample per layer):

# %%
model = build_model('digits')
per_step = []
hooks = spike_recorder(model, per_step)
with torch.no_grad(): model(torch.rand(5, 1, 8, 8), T=4)
for hook in hooks: hook.remove()
print({name: round(float(counts.sum()) / 5, 1) for name, counts in per_step})
test_eq(len(per_step), 4)                     # three hidden neuron layers and the decoder's
test_eq(per_step[0][1].shape, (4, 5))         # per step and sample: a decision time can cut them


# %% [markdown]
# Two layers are silent at initialisation: the hidden linear layer (`body.7`) and the decoder's output neurons.
# Their inputs are spikes in {0, 1} through a linear layer with PyTorch's default initialisation, so their currents
# are small, and a constant current x charges a membrane towards x (Eq. 4): below $V_{th}$ = 1 unless x ≥ 1.
# Training still works, for two reasons:
#
# - The TSD's logits are membrane potentials, not spikes. With no output spike the decision falls at T − 1, and
#   the loss reads the membranes there, which depend smoothly on the decoder's weights and inputs.
# - The surrogate derivative (chapter 0) is not zero below threshold. So the gradient reaches a silent layer's
#   weights through its membranes, and raises them until the neurons fire.

# %% [markdown]
# To see *which* neurons fire *when*, `record_spikes` keeps every neuron layer's spikes for a few samples; chapter 12
# draws them as a raster before and after training. Here, for the initial network, we expect the same two silent layers
# and no neuron that fires twice:

# %%
#| export
def record_spikes(model: nn.Module,  # a `SpikingClassifier` (or any network with NEURON_LAYERS)
                  images: Tensor,  # a few input samples [B, ...]
                  T: int,  # time steps
                 ) -> dict:  # layer name -> spikes [T, B, neurons]
    "Every neuron layer's spikes for `images` over T steps, for rasters and per-neuron counts (no early exit)."
    recorded = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, NEURON_LAYERS):
            def hook(module, inputs, output, name=name):
                spikes = output[0] if isinstance(output, tuple) else output
                recorded[name] = spikes.detach().flatten(2).float()
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(): model(images, T=T)
    finally:
        for hook in hooks: hook.remove()
    return recorded


# %%
spikes = record_spikes(build_model('digits'), torch.rand(5, 1, 8, 8), T=4)
print({name: (tuple(s.shape), round(float(s.sum()) / 5, 1)) for name, s in spikes.items()})
test_eq(list(spikes), ['body.1', 'body.4', 'body.7', 'decoder.neuron'])
test_eq(max(float(s.sum(0).max()) for s in spikes.values()) <= 1, True)     # at most one spike per neuron

# %%
test_fail(lambda: build_model('mnist', 'cifar'), exc=ValueError, contains='32x32')
test_fail(lambda: build_model('digits', decoder='softmax'), exc=ValueError, contains='decoder')
test_fail(lambda: build_model('digits', neuron='lif'), exc=ValueError, contains="decoder='rate'")
test_fail(lambda: build_model('digits', neuron='hodgkin-huxley'), exc=ValueError, contains='amos, lif, lif-psnpaper, psn')
test_fail(lambda: build_model('digits', surrogate='relu'), exc=ValueError, contains='sigmoid, atan')

# %% [markdown]
# ## Inference that stops at the decision
#
# The TSD decides at $t_{1st}$, the first step at which any output neuron fires, and reads the output membranes
# there. Computing the steps after $t_{1st}$ changes nothing, and they need not be computed, for two reasons:
#
# * **The network is causal in eval mode.** Every stateless layer (convolution, batch norm with its running
#   statistics, pooling, linear) works on each step and each sample on its own, direct encoding feeds the same
#   image at every step, and an AMOS neuron's state at $t$ depends only on its inputs up to $t$. So the output
#   spikes and membranes up to $t$ are the same whether the network is later run to $T$ or stopped at $t$.
# * **The TSD's output at $t_{1st}$ depends only on steps up to $t_{1st}$.** $t_{1st}$ is the first step with an
#   output spike, which is known once that step is computed, and the logits are the membranes at that step.
#
# So `predict(images, T, early_exit=True)` runs the network step by step (or `chunk` steps at a time), with every
# `AMOSLIF` carrying its state (`stateful=True`, section "Step by step" of chapter 6). After each pass it takes
# the decisions, writes the decided samples' logits, and drops those samples from the batch, from the input and
# from every neuron's carried state. It stops when every sample has decided, or at $T$ (where an undecided sample
# takes the membranes of step $T-1$, as the TSD does). A rate decoder, TWD and TQ-TTFS read all $T$ steps before
# they decide, so they cannot exit early, and `predict` says so.
#
# The check: a small network in eval mode, against the parallel forward. Expected: identical decisions and predictions, logits equal to
# float32 rounding, and fewer steps computed:

# %%
torch.manual_seed(0)
body = nn.Sequential(SequenceWise(nn.Flatten(), nn.Linear(64, 32)), AMOSLIF(step_mode='m'))
model = SpikingClassifier(body, DECODERS['tsd'](32, 10)).eval()
body[0].layers[1].weight.data.normal_(0, 0.3)                   # weights set by hand so that the decisions
model.decoder.synapse.weight.data.normal_(0, 0.5)               # spread over the steps (a trained MNIST net
model.decoder.synapse.bias.data.fill_(0.8)                      # decides at t = 0: see chapter 13)
images, T = torch.rand(64, 1, 8, 8), 8
full = model.predict(images, T, early_exit=False)
for chunk in (1, 3):
    early = model.predict(images, T, chunk=chunk)
    print(f"chunk {chunk}: decisions identical {torch.equal(early.t_first, full.t_first)}, predictions identical "
          f"{torch.equal(early.logits.argmax(1), full.logits.argmax(1))}, logits {diff_bucket(early.logits, full.logits)}, "
          f"steps computed {early.steps_computed.float().mean():.2f} of {T}")
    test_eq(early.t_first, full.t_first)
    test_close(early.logits, full.logits, eps=1e-5)
print("decision steps:", torch.bincount(full.t_first, minlength=T).tolist())
test_eq(int(early.steps_computed.max()) <= T, True)
test_fail(lambda: build_model('digits', decoder='rate').eval().predict(images, T), exc=ValueError, contains='cannot exit early')
test_fail(lambda: build_model('digits').train().predict(images, T), exc=ValueError, contains='eval mode')

# %% [markdown]
# Early exit carries only `AMOSLIF`'s state, so it refuses a body with any other temporal layer (a SpikingJelly
# neuron, say), whose steps it would get wrong. Two settings need care to stay exact. A hidden layer with
# `force_last=True` fires its silent neurons at $T-1$, which changes what the next layer sees at that step: every
# neuron is told the sequence length, and forces the spike when step $T-1$ comes (chapter 6). In bfloat16 autocast,
# the carried membranes stay float32, as one call keeps them. The checks: the same network with hidden forced
# spikes, and under bfloat16 autocast, decides and predicts exactly as the full pass; a body with SpikingJelly's LIF is
# refused:

# %%
torch.manual_seed(0)
forced_body = nn.Sequential(SequenceWise(nn.Flatten(), nn.Linear(64, 32)), AMOSLIF(force_last=True, step_mode='m'))
forced = SpikingClassifier(forced_body, DECODERS['tsd'](32, 10)).eval()
forced.load_state_dict(model.state_dict())
forced.decoder.synapse.bias.data.fill_(0.5)                     # later decisions: some at T-1, where the forced spikes arrive
for name, net, precision in [("hidden force_last", forced, torch.float32), ("bfloat16 autocast", model, torch.bfloat16)]:
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
        full, early = net.predict(images, T, early_exit=False), net.predict(images, T)
    print(f"{name:18} decisions identical {torch.equal(early.t_first, full.t_first)}, predictions identical "
          f"{torch.equal(early.logits.argmax(1), full.logits.argmax(1))}, deciding at T-1: {int((full.t_first == T - 1).sum())}")
    test_eq(early.t_first, full.t_first)
    test_eq(early.logits.argmax(1), full.logits.argmax(1))
lif_body = nn.Sequential(SequenceWise(nn.Flatten(), nn.Linear(64, 32)), SpikingJellyNeuron('lif'))
test_fail(lambda: SpikingClassifier(lif_body, DECODERS['tsd'](32, 10)).eval().predict(images, T), exc=ValueError, contains="'1'")

# %% [markdown]
# ## Summary
# `build_model` assembles the SCNN or the CIFAR network with AMOS LIF neurons and a decoder; `SpikingClassifier`
# encodes images over T steps; `spike_recorder` counts spikes per layer, step and sample.

# %% [markdown]
# ## Exercises
#
# 1. Count the parameters of the SCNN with one and with two convolutions per block, and of the CIFAR network at the paper's width C = 256.
# 2. With `spike_recorder`, find the layer with the highest firing rate of an untrained network on one batch. Does it change after one epoch of training?
# 3. Build the same network with `neuron='lif'` and `neuron='psn'` and compare the spikes per sample of each layer.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
