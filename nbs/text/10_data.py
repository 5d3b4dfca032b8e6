# %% [markdown]
# # Data
#
# > The datasets of the paper's experiments through torchvision (MNIST, Fashion-MNIST, CIFAR-10/100), an offline `digits` set that needs no download, and direct encoding over T time steps.

# %% [markdown]
# After this chapter you can load every dataset of the paper's experiments, offline, with each protocol's augmentation, draw shuffled, augmented batches of a whole split held in memory, and feed images to a network as input currents over T steps.

# %%
#| default_exp data

# %%
#| export
import os
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc

# %% [markdown]
# ## What each dataset looks like
#
# | name | images | classes | train / test | normalisation | augmentation (train) |
# |---|---|---|---|---|---|
# | `digits` | 1×8×8 | 10 | 1,437 / 360 (fixed split) | pixel / 16 | none |
# | `mnist` | 1×28×28 | 10 | 60,000 / 10,000 | mean 0.1307, std 0.3081 | none (random crop, pad 2, with `augment=True`) |
# | `fashion-mnist` | 1×28×28 | 10 | 60,000 / 10,000 | mean 0.2860, std 0.3530 | none (random crop, pad 2, with `augment=True`) |
# | `cifar10` | 3×32×32 | 10 | 50,000 / 10,000 | per-channel mean/std of CIFAR-10 | random crop (pad 4), horizontal flip |
# | `cifar100` | 3×32×32 | 100 | 50,000 / 10,000 | per-channel mean/std of CIFAR-100 | random crop (pad 4), horizontal flip |
#
# `augment='psn'` is the PSN paper's training policy instead (Fang et al. 2023b, the protocol the AMOS paper says it
# used on CIFAR): a horizontal flip (CIFAR only), TrivialAugmentWide, the normalisation, then RandomErasing with
# p = 0.1. The PSN paper normalises CIFAR with std (0.2023, 0.1994, 0.2010); we keep each dataset's own statistics
# above, a per-channel rescaling of the input of the first convolution.
#
# `digits` is the 8×8 handwritten-digit set that ships inside scikit-learn (1,797 images): it needs no download,
# so the quick start runs on any machine. Its split is fixed: a permutation with seed 0, the first 1,437 images
# for training and the last 360 for testing.

# %%
#| export
DATASETS = {
    'digits': dict(channels=1, size=8, classes=10),
    'mnist': dict(channels=1, size=28, classes=10, mean=(0.1307,), std=(0.3081,)),
    'fashion-mnist': dict(channels=1, size=28, classes=10, mean=(0.2860,), std=(0.3530,)),
    'cifar10': dict(channels=3, size=32, classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    'cifar100': dict(channels=3, size=32, classes=100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}
DIGITS_TRAIN = 1437


def digits_dataset(train: bool) -> TensorDataset:
    "scikit-learn's 8x8 digits as (image [1, 8, 8] in [0, 1], label); the fixed split described above."
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    chosen = order[:DIGITS_TRAIN] if train else order[DIGITS_TRAIN:]
    return TensorDataset(images[chosen], labels[chosen])


# %%
train, test = digits_dataset(True), digits_dataset(False)
print(len(train), len(test), tuple(train[0][0].shape), f"pixel range [{train.tensors[0].min():.1f}, {train.tensors[0].max():.1f}]")
test_eq((len(train), len(test)), (1437, 360))
test_eq(torch.bincount(test.tensors[1], minlength=10).sum().item(), 360)

# %% [markdown]
# ## The torchvision datasets
#
# The real loaders, with the transforms in the table. A missing dataset without `download=True` is an error that
# names the path and the flag, instead of torchvision's generic message.

# %%
#| export
AUGMENTATIONS = (None, False, True, 'psn')
DEBIAN_PACKAGES = {'fashion-mnist': 'dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist/)'}


def dataset_transform(name: str, train: bool,
                      augment=None,  # one of AUGMENTATIONS: None (CIFAR on, the others off), off, on, or the PSN paper's policy
                     ):
    "ToTensor and the dataset's normalisation; for training, random crops (and flips for CIFAR), or the PSN paper's policy."
    from torchvision import transforms
    if augment not in AUGMENTATIONS: raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    info = DATASETS[name]
    if augment is None: augment = name.startswith('cifar')          # CIFAR: on by default, as in the paper's setting
    steps = [transforms.ToTensor(), transforms.Normalize(info['mean'], info['std'])]
    if train and augment == 'psn':               # Fang et al. 2023b: flip (CIFAR), TrivialAugmentWide, ..., RandomErasing(0.1)
        flip = [transforms.RandomHorizontalFlip()] if name.startswith('cifar') else []
        wide = transforms.TrivialAugmentWide(interpolation=transforms.InterpolationMode.BILINEAR)
        return transforms.Compose(flip + [wide] + steps + [transforms.RandomErasing(p=0.1)])
    if train and augment:
        if name.startswith('cifar'): steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] + steps
        else: steps = [transforms.RandomCrop(28, padding=2)] + steps    # MNIST-like: small shifts, no flips
    return transforms.Compose(steps)


def import_torchvision():
    "torchvision, or an ImportError whose one line says how to repair an install whose torchvision does not fit its torch."
    try:
        import torchvision, torchvision.datasets, torchvision.transforms
        return torchvision
    except Exception as e:       # ImportError, or "operator torchvision::nms does not exist" beside another torch build
        reason = ' '.join(str(e).split())[:160]
        raise ImportError(f"torchvision cannot be loaded beside torch {torch.__version__} ({type(e).__name__}: {reason}); "
                          f"install the two together from one index, as the README's Install section shows, e.g. "
                          f"pip install --force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/cpu") from None


def load_dataset(name: str,  # one of DATASETS
                 data_dir: str = 'data',  # torchvision's root folder
                 train: bool = True,
                 download: bool = False,  # let torchvision download what is missing
                 augment=None,  # training augmentation (see dataset_transform); None: CIFAR yes, the others no
                 in_memory: bool = False,  # the whole split as `TensorImages` (below): the same images, batches much faster
                ) -> Dataset:
    "The train or test split of a dataset, transformed as described above."
    if name not in DATASETS: raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == 'digits': return digits_dataset(train)
    tvd = import_torchvision().datasets
    cls = {'mnist': tvd.MNIST, 'fashion-mnist': tvd.FashionMNIST, 'cifar10': tvd.CIFAR10, 'cifar100': tvd.CIFAR100}[name]
    transform = dataset_transform(name, train, augment)
    try:
        dataset = cls(root=data_dir, train=train, download=download, transform=transform)
        return tensor_images(dataset, name, augment if train else False) if in_memory else dataset
    except RuntimeError as e:
        if download: raise
        raw = os.path.join(os.path.abspath(data_dir), getattr(cls, 'base_folder', os.path.join(cls.__name__, 'raw')))
        debian = (f", or without internet access to the original host install Debian's package {DEBIAN_PACKAGES[name]} and "
                  f"gunzip its files into {raw}" if name in DEBIAN_PACKAGES else '')
        raise FileNotFoundError(f"{name} not found under {raw} ({e}); pass --download to fetch it{debian}, "
                                f"or --data-dir to point at a folder that holds it") from None


# %% [markdown]
# This book expects MNIST and Fashion-MNIST in torchvision's layout in a folder `shared/data` beside the
# repository. A notebook runs inside `nbs/`, so from here that folder is `../../shared/data`. Where it exists we load
# both; elsewhere the checks that need them are skipped.
#
# A reader without the files has two routes to them. `--download` lets torchvision fetch them from their original
# host. Without access to that host, Fashion-MNIST also comes as Debian's package `dataset-fashion-mnist`: its four
# `.gz` files, unzipped into `DATA/FashionMNIST/raw`, are exactly what the loader reads.

# %%
data_root = os.path.join('..', '..', 'shared', 'data')           # ../shared/data, seen from nbs/
found = {}
for name, folder in [('mnist', 'MNIST'), ('fashion-mnist', 'FashionMNIST')]:
    if os.path.isdir(os.path.join(data_root, folder)):
        found[name] = load_dataset(name, data_root, train=False)
        image, label = found[name][0]
        print(f"{name:14} {len(found[name])} test images of {tuple(image.shape)}; first label {label}, mean {image.mean():+.4f}")
        test_eq(tuple(image.shape), (1, 28, 28))

# %% [markdown]
# Fashion-MNIST is the harder of the two 28×28 sets: ten kinds of clothing, several of which (shirt, T-shirt,
# pullover, coat) differ only in details. Four test images of each class:

# %%
#| fig-cap: Four Fashion-MNIST test images of each class: shirt, T-shirt, pullover and coat differ only in details, which is what makes the set harder than MNIST.
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt
if 'fashion-mnist' in found:
    fashion = found['fashion-mnist']
    fig, axes = plt.subplots(4, 10, figsize=(10, 4.6))
    for k, name in enumerate(fashion.classes):
        indices = (fashion.targets == k).nonzero().flatten()[:4]
        for row, i in enumerate(indices.tolist()):
            axes[row, k].imshow(fashion.data[i], cmap='gray_r'); axes[row, k].axis('off')
        axes[0, k].set_title(name.replace('/', '/\n'), fontsize=8)
    fig.tight_layout(); plt.show()

# %%
for route in ['--download', 'dataset-fashion-mnist', '/nonexistent/FashionMNIST/raw']:    # the path and both routes
    test_fail(lambda: load_dataset('fashion-mnist', '/nonexistent'), exc=FileNotFoundError, contains=route)
test_fail(lambda: load_dataset('cifar10', '/nonexistent'), exc=FileNotFoundError, contains='/nonexistent/cifar-10-batches-py')
test_fail(lambda: load_dataset('imagenet'), exc=ValueError, contains='unknown dataset')
test_fail(lambda: dataset_transform('cifar10', True, augment='heavy'), exc=ValueError, contains="'psn'")
print("missing data and unknown names fail with a message naming the fix")

# %% [markdown]
# The transforms of every dataset, CIFAR included, can be checked without its files, on torchvision's `FakeData`
# of the right shapes (the loaders above are the real ones):

# %%
from torchvision.datasets import FakeData
torch.manual_seed(0)
for name in ['fashion-mnist', 'cifar10', 'cifar100']:
    info = DATASETS[name]
    for augment in (None, 'psn'):
        fake = FakeData(size=4, image_size=(info['channels'], info['size'], info['size']), num_classes=info['classes'],
                        transform=dataset_transform(name, train=True, augment=augment), random_offset=0)
        image, label = fake[0]
        print(f"{name:14} augment={augment!s:5} {tuple(image.shape)}")
        test_eq(tuple(image.shape), (info['channels'], info['size'], info['size']))


# %% [markdown]
# ## A whole split in memory
#
# A torchvision dataset hands the `DataLoader` one image at a time: a PIL image, converted, normalised and (for
# training) cropped, sample by sample. For 28×28 images that costs more than the work it does: an epoch of
# Fashion-MNIST with random crops spends seconds in Python per pass over 60,000 images. Yet a whole split is small
# (60,000 × 784 bytes, 188 MB as float32), so we can do each step once for the whole split and each augmentation
# once per batch:
#
# 1. convert and normalise every image at load time, with the very operations of `ToTensor` and `Normalize`
#    (divide by 255, subtract the mean, divide by the standard deviation, in float32), so every pixel is the
#    one the torchvision pipeline gives, bit for bit;
# 2. for a batch of indices, gather the images with one indexing;
# 3. crop: `RandomCrop(size, padding=p)` pads with black, which after normalisation is the value
#    $(0 - \mu_c)/\sigma_c$ of each channel, and cuts a window at a random offset in $\{0, \dots, 2p\}^2$; we pad
#    the batch once and gather each image's window with one advanced index;
# 4. flip (CIFAR): each image with probability 1/2, also one operation for the batch.
#
# The batches come in the order `DataLoader(shuffle=True, generator=g)` draws for the same generator, so a run
# resumed from a checkpoint redoes an epoch with the same batches; the crops draw from that generator too.

# %%
#| export
class TensorBatches:
    "An epoch's batches of a `TensorImages`: iterable once per `iter`, with a length, like a DataLoader."
    def __init__(self, data, batch_size: int, generator=None): self.data, self.batch_size, self.generator = data, batch_size, generator
    def __len__(self): return -(-len(self.data) // self.batch_size)
    def __iter__(self):
        if self.generator is None: order = torch.arange(len(self.data))
        else:                                          # what DataLoader(shuffle=True, generator=g) draws: a seed, then the order
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            order = torch.randperm(len(self.data), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            yield self.data.augment(self.data.images[chosen], self.generator), self.data.labels[chosen]


class TensorImages(Dataset):
    "A split as one normalised float32 tensor, with random crops (and flips) applied a batch at a time."
    def __init__(self, images: Tensor,  # [N, C, H, W], normalised
                 labels: Tensor,  # [N] class indices
                 fill: Tensor,  # [C]: a black pixel after normalisation, the crops' padding
                 padding: int = 0,  # random crops: pad by this many pixels on each side (0: none)
                 flip: bool = False,  # random horizontal flips
                ):
        self.images, self.labels, self.fill, self.padding, self.flip = images, labels, fill, padding, flip

    def __len__(self): return len(self.labels)
    def __getitem__(self, i): return self.augment(self.images[i:i + 1])[0], int(self.labels[i])
    def subset(self, indices: Tensor): return TensorImages(self.images[indices], self.labels[indices], self.fill, self.padding, self.flip)
    def batches(self, batch_size: int, generator=None) -> TensorBatches:
        "Shuffled and augmented batches drawn with `generator`; without one, in order (augmented with torch's global RNG)."
        return TensorBatches(self, batch_size, generator)

    def augment(self, images: Tensor, generator=None) -> Tensor:
        "Steps 3 and 4 above on a batch [B, C, H, W]."
        B, C, H, W = images.shape
        if self.padding:
            p = self.padding
            padded = self.fill.view(1, C, 1, 1).repeat(B, 1, H + 2 * p, W + 2 * p)
            padded[:, :, p:p + H, p:p + W] = images
            dy, dx = torch.randint(0, 2 * p + 1, (2, B), generator=generator)
            rows, cols = dy[:, None] + torch.arange(H), dx[:, None] + torch.arange(W)      # [B, H], [B, W]
            images = padded.permute(0, 2, 3, 1)[torch.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]
            images = images.permute(0, 3, 1, 2).contiguous()                                  # [B, H, W, C] -> [B, C, H, W]
        if self.flip:
            flipped = torch.rand(B, generator=generator) < 0.5
            images = torch.where(flipped.view(B, 1, 1, 1), images.flip(-1), images)
        return images


# %%
#| export
def tensor_images(dataset, name: str, augment=None) -> TensorImages:
    "A torchvision MNIST/Fashion-MNIST/CIFAR split as `TensorImages`: steps 1-4 above, for `augment` None, False or True."
    if augment not in (None, False, True): raise ValueError(f"in memory: augment None, False or True (crops and flips), got {augment!r}")
    if augment is None: augment = name.startswith('cifar')
    info = DATASETS[name]
    images = torch.as_tensor(dataset.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)   # MNIST [N, H, W]; CIFAR [N, H, W, C]
    mean, std = (torch.as_tensor(info[key], dtype=torch.float32).view(-1, 1, 1) for key in ('mean', 'std'))
    images = images.contiguous().float().div(255).sub_(mean).div_(std)                  # ToTensor, then Normalize
    fill = ((torch.zeros(info['channels'], 1, 1) - mean) / std).view(-1)
    padding = (4 if name.startswith('cifar') else 2) if augment else 0
    return TensorImages(images, torch.as_tensor(dataset.targets, dtype=torch.long), fill, padding, bool(augment) and name.startswith('cifar'))


# %% [markdown]
# What to expect: unaugmented, the tensors equal the torchvision pipeline's images exactly; a cropped image is the
# torchvision crop at some offset, so it matches one of the 25 windows of the padded image; and the batches of an
# unaugmented split come in the DataLoader's order.

# %%
for name, test_set in found.items():
    memory = tensor_images(test_set, name, augment=False)
    test_eq(torch.stack([test_set[i][0] for i in range(100)]), memory.images[:100])      # bit for bit
    test_eq(memory.labels[:100].tolist(), [test_set[i][1] for i in range(100)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(memory.images, memory.labels), batch_size=1000,
                                         shuffle=True, generator=torch.Generator().manual_seed(3))
    ours = memory.batches(1000, torch.Generator().manual_seed(3))
    test_eq(len(ours), len(loader))
    test_eq([labels.tolist() for _, labels in ours], [labels.tolist() for _, labels in loader])
    cropped = tensor_images(test_set, name, augment=True)
    originals = memory.images[:64]
    crops = cropped.augment(originals, torch.Generator().manual_seed(0))
    padded = cropped.fill.view(1, -1, 1, 1).repeat(64, 1, 32, 32); padded[:, :, 2:30, 2:30] = originals
    windows = padded.unfold(2, 28, 1).unfold(3, 28, 1)                        # [64, 1, 5, 5, 28, 28]: every offset
    matches = (windows == crops[:, :, None, None]).flatten(-2).all(-1).flatten(1).any(1)
    test_eq(matches.all().item(), True)
    shifted = (crops != originals).flatten(1).any(1).float().mean().item()
    test_eq(load_dataset(name, data_root, train=False, in_memory=True).images[:100], memory.images[:100])
    print(f"{name:14} {len(memory)} images in memory, {len(ours)} shuffled batches of 1000 in the DataLoader's order; "
          f"every crop a window of its padded image, {shifted:.0%} of them moved")

# %% [markdown]
# CIFAR's images are stored height × width × channel; the same checks on a stand-in with CIFAR's layout, whose
# flips must also match (a flipped crop is a window of the mirrored padded image):

# %%
from types import SimpleNamespace
from PIL import Image
fake = SimpleNamespace(data=torch.randint(0, 256, (64, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy(),
                       targets=list(range(64)))
transform = dataset_transform('cifar10', train=False)
memory = tensor_images(fake, 'cifar10', augment=False)
test_eq(torch.stack([transform(Image.fromarray(image)) for image in fake.data]), memory.images)
augmented = tensor_images(fake, 'cifar10')                      # None: crops and flips, as for CIFAR's training set
test_eq((augmented.padding, augmented.flip), (4, True))
crops = augmented.augment(memory.images, torch.Generator().manual_seed(0))
padded = augmented.fill.view(1, 3, 1, 1).repeat(64, 1, 40, 40); padded[:, :, 4:36, 4:36] = memory.images
def is_window(crops, padded):
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)          # [64, 3, 9, 9, 32, 32]
    return (windows == crops[:, :, None, None]).all(1).flatten(-2).all(-1).flatten(1).any(1)
plain, mirrored = is_window(crops, padded), is_window(crops.flip(-1), padded)
test_eq((plain | mirrored).all().item(), True)
print(f"CIFAR layout: pixels as torchvision's; every crop a window, {mirrored.float().mean():.0%} of them mirrored")


# %% [markdown]
# ## Direct encoding
#
# The paper does not say how images enter its networks. We use direct encoding, as the PSN paper's CIFAR code
# (whose protocol the paper follows) and SpikingJelly's examples do: the first convolution receives the image itself
# at every time step, so the network's input is the image repeated over T, in the `[T, B, ...]` layout of every layer
# after it.

# %%
#| export
def direct_encode(images: Tensor,  # [B, C, H, W]
                  T: int,  # time steps
                 ) -> Tensor:  # [T, B, C, H, W] (a view: no copy)
    "The same image at every time step."
    if T < 1: raise ValueError(f"T must be at least 1, got {T}")
    return images.unsqueeze(0).expand(T, *images.shape)


# %%
images = torch.randn(2, 1, 8, 8)
test_eq(direct_encode(images, 3).shape, (3, 2, 1, 8, 8))
test_eq(direct_encode(images, 3)[2], images)
print(tuple(direct_encode(images, 3).shape))

# %% [markdown]
# ## Summary
# `load_dataset` returns the five datasets as torchvision would (plus the offline `digits`), with a clear error
# when data is missing, or with `in_memory=True` as `TensorImages`: the same pixels, drawn a batch at a time in the
# DataLoader's order, with crops and flips applied to whole batches; `direct_encode` repeats images over time.

# %% [markdown]
# ## Exercises
#
# 1. Load Fashion-MNIST with and without `in_memory=True`, no augmentation, and check that the first shuffled batch is the same for the same seed.
# 2. Draw a batch of augmented images from `TensorImages` and from torchvision's transforms side by side. Can you tell which is which?
# 3. Write a Poisson rate encoder beside `direct_encode` and train `digits` at T = 4 with each. Which reaches the higher accuracy, and at what average decision step?

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
