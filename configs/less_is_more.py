r"""Less-is-More's pretraining: iBOT with warmup-stable-decay schedules at a fixed budget of examples seen.

    python launch.py --config=configs/less_is_more.py                      # mu/8 on the simulator, 2-core CPU
    python launch.py --config=configs/less_is_more.py:variant=S/16,examples=50000000   # the paper's budget
    python launch.py --config=configs/less_is_more.py:data_root=/data      # + UCM, MSTAR, OpenSARShip 1-NN
    python launch.py --config=configs/less_is_more.py:smoke                # tiny, for tests

"Less is More? Data Specialization for Self-Supervised Remote Sensing Models" (Barseghyan et al., 2025) pretrains
every data variant for the same number of images seen (50 M), so a smaller subset gets more epochs, with iBOT's
recipe except that lr, weight decay and teacher momentum follow WSD schedules, and judges the data by cosine 1-NN
accuracy on frozen features with a bootstrapped test set. Here: iBOT (CLS + masked-patch loss through one shared
head, EMA centres, no KoLeo) on the default recipe's model and crops; WSD for all three quantities: lr 0 -> peak ->
min_lr, weight decay held at 0.04 then raised to 0.4, momentum held then raised to 1, over the last 20 % of the
budget along 1 - sqrt (chosen: the seed names WSD but not its decay; MiniCPM, arXiv 2404.06395, found 10 % enough).
The data is the pool as given (`pruning.policy=none`): the data axis of `--mode=compare` chooses it.

`data_root` adds three real labelled sets as 1-NN evaluators, resized to the pool's image size: UC Merced land use
(`<data_root>/ucm_captions/{train,val}/<class>/`, 21 classes) and MSTAR (`<data_root>/mstar10/{train,test}/<class>/`,
10 vehicle classes) through the folder source (grayscale), and the OpenSARShip calibrated ship chips
(`<data_root>/opensarship/`, Cargo / Tanker / Other, VV sigma0 in dB); the summary then also reports the mean 1-NN
over the datasets with its combined bootstrap std (`oceansar.evals.across`).
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, variant="mu/8", examples=64 * 2000, data_root="")
    c = default.get_config(f"smoke={arg.smoke},variant={arg.variant},policy=none")
    c.name = "less_is_more"
    c.ibot.weight = 1.0                    # iBOT: lambda1 = lambda2 = 1, shared head
    c.dino.koleo_weight = 0.0
    c.dino.centering = "ema"
    c.schedules.lr = "wsd"
    c.schedules.weight_decay = "wsd"
    c.schedules.teacher_momentum = "wsd"
    c.schedules.decay_fraction = 0.2
    c.schedules.decay_shape = "1-sqrt"
    c.evals.wv.knn_ks = (1,)               # cosine 1-NN with a bootstrapped test set is the headline; more
                                           # named evaluators add the mean over datasets (evals.across)
    if not arg.smoke:
        c.total_examples = arg.examples    # the fixed budget, whatever the data
    if arg.data_root:
        for name, source, folder, test_split in (("ucm", "folder", "ucm_captions", "val"),
                                                 ("mstar", "folder", "mstar10", "test"),
                                                 ("opensarship", "opensarship", "opensarship", "test")):
            e = c.evals.wv.copy_and_resolve_references()
            e.source, e.root = source, f"{arg.data_root}/{folder}"
            e.train_split, e.test_split = "train", test_split
            e.probes, e.targets = ("knn",), ()
            c.evals[name] = e
    return c
