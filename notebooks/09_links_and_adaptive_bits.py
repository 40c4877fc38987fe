# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 09 · Time, not just bytes: client links, stragglers and adaptive bit widths
#
# Lessons 05 and 06 count bytes. A halved upload matters to a person waiting for a model only if it
# shortens the rounds, and a round's length is set by the clients' links and devices. Lee & Lee motivate
# INT16 by "communication-constrained environments" and name their next step: choose each client's bit
# width from its own link (adaptive per-client quantization). McMahan et al.'s FedAvg waits for every
# sampled client, so one slow link stalls a round; buffered asynchronous aggregation (FedBuff, Nguyen et
# al. 2022, *Federated Learning with Buffered Asynchronous Aggregation*, AISTATS) does not wait.
#
# Here every run has a simulated clock (`fl_lib/core/links.py`): each client gets a link and a device drawn
# from a profile with cited numbers, and metrics.csv gains `sim_seconds`, `cum_sim_seconds`, `mean_bits`,
# `dropped_clients` and `mean_staleness`. The clock is a deterministic function of the config and the
# seed, so paired runs (same seed, different upload policy) share their clients, data and links.

# %% tags=["parameters"] slideshow={"slide_type": "skip"}
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # where datasets are downloaded and built; empty: the project's data/
num_rounds: int = 30  # communication rounds of every synchronous run
num_clients: int = 10  # K, clients, all sampled every round
alpha: float = 0.5  # Dirichlet concentration of the label split
link: str = "mobile"  # link profile of every run: mobile, iot, or lognormal:MEDIAN_MBITS,SIGMA
what_if_link: str = "iot"  # a second profile whose clock is replayed from the same runs, without training
bit_widths: str = "32,16,8"  # fixed upload bit widths, comma-separated, set against the adaptive policy
seeds: str = "0,1"  # comma-separated seeds; runs repeat for each (the lesson says which use the first only)
target: float = 0.3  # test accuracy whose simulated time and upload to reach are tabled
deadline: float = 0.0  # seconds a round waits in the deadline run (first seed); 0: the median FP32 client time
min_bits: int = 2  # the narrowest width the adaptive policy may give a client, 2..16
fedbuff_rounds: int = 0  # server updates of each FedBuff run (first seed); 0: as many client trainings as FedAvg
buffer_size: int = 3  # K, FedBuff uploads per server update; 0: the clients per round
concurrency: int = 0  # clients FedBuff trains at once; 0: the clients per round
server_lr: float = 1.0  # eta_g, FedBuff's server learning rate on the mean of the buffer
buffer_weights: str = "uniform"  # FedBuff: uniform (the paper's 1/K mean) or samples (n_i / sum n_i, a variant)
results_dir: str = ""  # cached runs and attacks, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
theme: str = "screen"  # figures for a laptop screen, or a projector (larger fonts, thicker lines): screen or projector
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %% slideshow={"slide_type": "subslide"}
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from fl_lib.core import config
from fl_lib.study import lesson
from fl_lib.core import links
from fl_lib.privacy import secagg
from fl_lib.study import plots
from fl_lib.study import reference
from fl_lib.core.config import parse_list, parse_seeds
from fl_lib.core.data import load_dataset
from fl_lib.simulator.federation import Federation, replay_clock
from fl_lib.study.measures import best_acc_until, time_to_target, time_to_target_by
from fl_lib.study.sweep import sweep
from fl_lib.study.widgets import LinkExplorer, clock_stats, clock_summary, clock_view, width_label

lesson.setup("lee", "mcmahan", theme=theme)
data_root = lesson.folder("data_root", data_root)
results_dir = lesson.folder("results_dir", results_dir)
figures_dir = lesson.folder("figures_dir", figures_dir)

bits_list = parse_list(bit_widths, int)
seed_list = parse_seeds(seeds)
ref_bits = 32 if 32 in bits_list else bits_list[0]  # the width of the deadline and FedBuff runs
base = config.preset(preset, dataset=dataset, data_root=data_root, num_rounds=num_rounds, num_clients=num_clients,
                     alpha=alpha, partition="dirichlet", link=link, device=device)
shown = ["model", "dataset", "num_clients", "partition", "alpha", "client_fraction", "local_epochs", "batch_size",
         "lr", "num_rounds", "link"]
pd.DataFrame([{k: getattr(base, k) for k in shown}], index=["base config"])

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The clock
#
# Client $k$ has an uplink $\mathrm{up}_k$, a downlink $\mathrm{down}_k$ (bit/s), a latency and a training
# speed (FLOP/s). They are drawn once per run, log-normally around a profile's medians, and the two
# bandwidths vary from round to round by a log-normal factor:
#
# $$x_k = \tilde{x}\, e^{\sigma z_k}, \qquad x_k(t) = x_k\, e^{\sigma_j z_k(t)}, \qquad z \sim \mathcal{N}(0, 1)$$
#
# Every draw comes from a generator seeded by (seed, round, client), so runs with the same seed share
# their links. The profiles and where their numbers come from (`links.PROFILES`; the custom form
# `lognormal:MEDIAN,SIGMA` sets the uplink median and spread, the downlink at 7.98 times the uplink as in
# Ookla's medians, latency and compute as `mobile` without spread):

# %%
profile = links.parse_link(link)
what_if_profile = links.parse_link(what_if_link)
shown_profiles = {p.name: p for p in (*links.PROFILES.values(), profile, what_if_profile) if p is not None}
profiles = pd.DataFrame([{"profile": p.name, "uplink median (Mbit/s)": p.up_mbps, "uplink sigma": p.up_sigma,
                          "downlink median (Mbit/s)": p.down_mbps, "downlink sigma": p.down_sigma,
                          "latency (s)": p.latency_s, "compute (GFLOP/s)": p.flops_per_s / 1e9,
                          "compute sigma": p.flops_sigma, "per-round sigma_j": p.jitter_sigma}
                         for p in shown_profiles.values()]).set_index("profile")
display(profiles.round(4))
display(Markdown("\n".join(f"- **{p.name}**: {p.source}" for p in shown_profiles.values())))

# %% [markdown] slideshow={"slide_type": "subslide"}
# A client's time in round $t$ is its download of the global model ($D$ bytes), $E$ local epochs over its
# $n_k$ samples at $F$ training FLOPs per sample, its upload ($U_k$ bytes, the codec's real encoded
# length at its bit width) and one latency:
#
# $$T_k = \frac{8 D}{\mathrm{down}_k} + \frac{n_k E F}{\mathrm{speed}_k} + \frac{8 U_k}{\mathrm{up}_k} + \mathrm{latency}_k$$
#
# A synchronous round lasts as long as the slowest client the server waits for:
# $T_{\text{round}} = \max_{k\ \text{kept}} T_k$. Below, $D$, $U$ at each width and $F$ for this model,
# then every client's upload time $8 U_k / \mathrm{up}_k$ over all rounds on the `link` profile,
# computed by the engine's own `Federation.client_time` and `plan` (`widgets.clock_stats`): nothing is
# trained.

# %% slideshow={"slide_type": "subslide"}
fed = Federation(base.replace(seed=seed_list[0]))
E = base.local_epochs
sizes = pd.DataFrame({"bits": bits_list, "upload U (bytes)": [fed.upload_size(b) for b in bits_list]})
print(f"D = {fed.model_bytes:,} bytes (one float32 broadcast); F = {fed.flops_per_sample():,} training FLOPs per "
      f"sample; E = {E}; n_k from {min(fed.sizes)} to {max(fed.sizes)} samples")
display(sizes.set_index("bits"))
clock = clock_stats(fed, link, 0.0, bits_list, num_rounds, min_bits=min_bits)
fixed_clock = clock[clock.policy != "adaptive"]
plots.histogram(fixed_clock, "upload_s", "policy", log_x=True, xlabel="upload seconds 8 U_k / up_k",
                ylabel="client-rounds", title=f"Upload time of every client and round on {link} ({base.model})",
                name="09_upload_times", figures_dir=figures_dir).show()
clock_summary(clock).round(3)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The clock under secure aggregation
#
# With `secure_aggregation=True` (lesson 08; Bonawitz et al. 2017) a client does not send its codec upload.
# It sends a masked vector whose values are uniform modulo $2^k$, so each costs $k$ bits, more than `bits`
# (the modulus must hold the weighted sum of every client's codes), with its public key and its Shamir
# shares; it receives the other clients' keys and the shares addressed to it; and the protocol takes four
# message rounds (advertise keys, share keys, masked input collection, unmasking), each a round trip:
#
# $$T_k = \frac{8 \big(D + (n - 1)(P + 2S)\big)}{\mathrm{down}_k} + \frac{n_k E F}{\mathrm{speed}_k} + \frac{8 M_k}{\mathrm{up}_k} + 4\, \mathrm{latency}_k$$
#
# with $n$ the round's clients, $P$ the bytes of a public key, $S$ those of a share (both printed below) and
# $M_k$ the masked upload (`secagg.masked_upload_bytes`: vector, key and the $3n - 2$ shares it sends). The
# protocol's rounds are barriers; charging each client its own four rounds is exact when the small key and
# share messages take equally long for every client (`links.py` says by how much it can fall short otherwise).
# Below, the same rounds and links with and without secure aggregation at each quantized width of
# `bit_widths`; nothing is trained.

# %%
sa_widths = [b for b in bits_list if b != 32] or [8]  # secure aggregation sums integer codes: 2..16 bits
sa_rows = []
for lk in dict.fromkeys([link, what_if_link]):
    if links.parse_link(lk) is None:
        continue  # no clock on link "none"
    for b in sa_widths:
        row = {"link": lk, "upload": width_label(b)}
        for secure in (False, True):
            view = clock_view(fed, link=lk, bits=b, bits_policy="fixed", deadline=0.0, secure_aggregation=secure)
            name = "secure aggregation" if secure else "plain"
            row[f"{name}: bytes per client"] = view.upload_size(b, fed.sample_clients(1))
            row[f"{name}: mean round (s)"] = np.mean([view.plan(t, fed.sample_clients(t))[1]
                                                      for t in range(1, num_rounds + 1)])
        sa_rows.append(row)
sa_clock = pd.DataFrame(sa_rows).set_index(["link", "upload"])
sa_clock["bytes ratio"] = sa_clock["secure aggregation: bytes per client"] / sa_clock["plain: bytes per client"]
sa_clock["round ratio"] = sa_clock["secure aggregation: mean round (s)"] / sa_clock["plain: mean round (s)"]
display(Markdown(f"P = {secagg.KEY_BYTES} bytes, S = {secagg.SHARE_BYTES} bytes (`secagg.KEY_BYTES`, "
                 f"`secagg.SHARE_BYTES`). On the first seed's links, secure aggregation makes an upload "
                 + "; ".join(f"{u} on `{lk}` {r['bytes ratio']:.2f} times larger and a round "
                             f"{r['round ratio']:.2f} times longer ({r['plain: mean round (s)']:.3g} s against "
                             f"{r['secure aggregation: mean round (s)']:.3g} s)" for (lk, u), r in sa_clock.iterrows())
                 + "."))
sa_clock.round(3)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Stragglers
#
# Since the round lasts $\max_k T_k$, one slow client sets everyone's pace: the others wait idle. The
# table splits the slowest client's time of each round into its four terms (mean over rounds) and sets
# the round against the median client: the ratio is the time the median client spends waiting. A
# narrower upload can only shorten the upload term.

# %%
fp32 = clock[clock.policy == width_label(ref_bits)]
parts = ["download_s", "compute_s", "upload_s", "latency_s"]
slowest = fp32.loc[fp32.groupby("round").total_s.idxmax()]
stragglers = pd.DataFrame({
    "slowest client: " + p.removesuffix("_s"): [slowest[p].mean()] for p in parts} | {
    "round (s)": [slowest.total_s.mean()], "median client (s)": [fp32.groupby("round").total_s.median().mean()]},
    index=[f"{width_label(ref_bits)} on {link}"])
stragglers["round / median client"] = stragglers["round (s)"] / stragglers["median client (s)"]
slow_clients = slowest.client.value_counts()
display(stragglers.round(3))
print("slowest client of a round (client: rounds):", slow_clients.to_dict())

# %% [markdown] slideshow={"slide_type": "subslide"}
# A **deadline** $d > 0$ stops the wait: the clients with $T_k > d$ are dropped from the round (their work
# is thrown away, as in partial participation) and the round lasts $d$ if anyone was dropped:
#
# $$\text{kept} = \{k : T_k \le d\}, \qquad T_{\text{round}} = d \ \text{if any client is dropped, else} \ \max_k T_k$$
#
# With `deadline = 0` the run uses the median client time at FP32 over all rounds, to two significant
# digits; the share of client-rounds that miss it is printed below, from the clock and from the run.
# Both runs below use the first seed and the same links, so they differ only by the deadline. If the
# same clients miss it every round (a slow device is slow in every round), their data is never learned
# from: the clients that do are printed too.

# %% slideshow={"slide_type": "subslide"}
seed0 = seed_list[0]
d = deadline if deadline > 0 else float(f"{fp32.total_s.median():.2g}")
pair = {f"{width_label(ref_bits)}, no deadline": {}, f"{width_label(ref_bits)}, deadline {d:g} s": {"deadline": d}}
deadline_runs = sweep(base.replace(bits=ref_bits), {"label": pair, "seed": seed0}, root=results_dir, workers=workers)
late = fp32.assign(late=fp32.total_s > d)  # from the clock alone: who would miss the deadline
always_late = [int(k) for k, v in late.groupby("client").late.mean().items() if v == 1]
display(Markdown(
    f"Deadline {d:g} s ("
    + ("the parameter" if deadline > 0 else f"the median FP32 client time, {fp32.total_s.median():.3g} s")
    + f"): on the first seed's clock {int(late.late.sum())} of {len(late)} client-rounds at {width_label(ref_bits)} "
    f"take longer ({late.late.mean():.0%}). Clients late in every round they were sampled: "
    f"{', '.join(map(str, always_late)) or 'none'}."))
total_s = deadline_runs.groupby("label").cum_sim_seconds.max().max()
unit, per = ("hours", 3600.0) if total_s >= 3600 else ("minutes", 60.0)  # the clock's unit in every figure
deadline_runs["sim_time"] = deadline_runs.cum_sim_seconds / per
plots.lines(deadline_runs, "sim_time", "test_acc", "label", title=f"A deadline on {link} (seed {seed0})",
            xlabel=f"simulated {unit}", ylabel="test accuracy", name="09_deadline", figures_dir=figures_dir).show()
deadline_table = pd.DataFrame({
    "final test_acc": deadline_runs.groupby("label").test_acc.last(),
    f"simulated {unit}": deadline_runs.groupby("label").sim_time.max(),
    "dropped client-rounds": deadline_runs.groupby("label").dropped_clients.sum(),
    "share dropped": deadline_runs.groupby("label").dropped_clients.sum() / (num_rounds * base.clients_per_round),
    f"{unit} to {target:g}": time_to_target_by(deadline_runs, "label", target, x="sim_time")})
deadline_table.round(4)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Fixed against adaptive bits
#
# With `bits_policy = "adaptive"` each client gets, every round, a width $b_k$ from `min_bits` to 16 bits
# (the lesson's adaptive runs set `bits` to 16). Its time splits into the part that does not depend on the width,
# $R_k = 8D/\mathrm{down}_k + n_k E F/\mathrm{speed}_k + \mathrm{latency}_k$, and its upload
# $u_k(b) = 8 U(b)/\mathrm{up}_k$. A round lasts $\max_k T_k$, so a narrower upload saves time only where the
# upload is what makes its client slow. The policy (`links.adaptive_plan`, used by FedAvg and FedBuff alike):
#
# $$b_k^{\text{own}} = \max\{b : u_k(b) \le R_k\}, \qquad \tau = \max_k \big(R_k + u_k(b_k^{\text{own}})\big), \qquad b_k = \max\{b : R_k + u_k(b) \le \tau\}$$
#
# $b_k^{\text{own}}$ is the widest upload that does not dominate the client's own time (`min_bits` if even that
# one does); the budget $\tau$ is the slowest client at that width, or the deadline if there is one. A client
# slow to compute keeps 16 bits even when it is the slowest; a client whose upload dominates is narrowed
# until it no longer does. Every client fits ($b_k \ge b_k^{\text{own}}$), so without a deadline nobody is
# dropped, and $\tau$ lies between the round at `min_bits` and the round at 16 bits. With a deadline, a
# client that cannot fit even `min_bits` is a straggler and is dropped.
#
# An earlier budget was $\tau = \max_k T_k(b_{\min})$, the slowest client's time at `min_bits`: the slowest client
# got `min_bits` in every round, even when its compute, not its upload, made it the slowest. Below, from the clock
# alone (first seed, every round), the two budgets client by client, with `min_bits` as the floor of both.
# Then each seed runs every fixed width, INT16 and the adaptive policy on the same clients and links (paired
# runs).

# %%
allowed = links.adaptive_widths(16, min_bits)
rows = []
for t in range(1, num_rounds + 1):
    chosen = fed.sample_clients(t)
    times = [{b: fed.client_time(t, k, b) for b in allowed} for k in chosen]
    now, _ = links.adaptive_plan(times)
    before, _ = links.adaptive_plan(times, deadline=max(c[min(allowed)].total for c in times))  # earlier budget
    slowest = max(range(len(chosen)), key=lambda i: times[i][min(allowed)].total)  # at the narrowest width
    round_now = max(c[b].total for c, b in zip(times, now))
    round_before = max(c[b].total for c, b in zip(times, before))
    for i, (k, c) in enumerate(zip(chosen, times)):
        rest = c[16].download + c[16].compute + c[16].latency
        rows.append({"round": t, "client": k, "rest R_k (s)": rest, "upload at 16 bits (s)": c[16].upload,
                     "upload dominates": c[16].upload > rest, "bits": now[i], "bits (earlier budget)": before[i],
                     "slowest": i == slowest, "round (s)": round_now, "round, earlier budget (s)": round_before})
policy_clock = pd.DataFrame(rows)
by_client = policy_clock.groupby("client").agg(
    n_k=("client", lambda x: fed.sizes[int(x.iloc[0])]), rest_s=("rest R_k (s)", "mean"),
    upload16_s=("upload at 16 bits (s)", "mean"), upload_dominates=("upload dominates", "mean"),
    slowest=("slowest", "sum"), bits=("bits", "mean"), bits_earlier=("bits (earlier budget)", "mean"))
slow = policy_clock[policy_clock.slowest]
per_round = policy_clock.drop_duplicates("round")
display(Markdown(
    f"The slowest client of a round (at {min(allowed)} bits) had an upload at 16 bits shorter than the rest of its "
    f"time in {int((~slow['upload dominates']).sum())} of {len(slow)} rounds. It got {slow.bits.mean():.3g} bits on "
    f"average under this policy and {slow['bits (earlier budget)'].mean():.3g} under the earlier budget; all "
    f"clients got {policy_clock.bits.mean():.3g} against {policy_clock['bits (earlier budget)'].mean():.3g}, and a "
    f"round lasted {per_round['round (s)'].mean():.3g} s against {per_round['round, earlier budget (s)'].mean():.3g} s "
    f"(from the clock; no training)."))
by_client.round(2).T

# %%
run_bits = bits_list + ([] if 16 in bits_list else [16])  # INT16 always runs: the adaptive policy is set against it
label = {b: width_label(b) for b in run_bits}
policy = {label[b]: {"bits": b} for b in run_bits} | {"adaptive": {"bits": 16, "bits_policy": "adaptive",
                                                                   "min_bits": min_bits}}
metrics = sweep(base, {"label": policy, "seed": seed_list}, root=results_dir, workers=workers)  # side by side; cached
metrics["sim_time"] = metrics.cum_sim_seconds / per
metrics["cum_upload_mb"] = metrics.cum_upload_bytes / 1e6
policies = list(dict.fromkeys(metrics.label))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each seed has its own clock, so the curves below are first interpolated onto one time (or megabyte) grid
# per policy (`plots.common_grid`), then drawn as the mean over seeds with a band of one standard deviation.

# %% slideshow={"slide_type": "subslide"}
plots.lines(plots.common_grid(metrics, "sim_time", "test_acc", "label"), "sim_time", "test_acc", "label",
            title=f"Test accuracy against simulated time on {link}", xlabel=f"simulated {unit}",
            ylabel="test accuracy", name="09_accuracy_vs_time", figures_dir=figures_dir).show()
plots.lines(plots.common_grid(metrics, "cum_upload_mb", "test_acc", "label"), "cum_upload_mb", "test_acc", "label",
            title="Test accuracy against cumulative upload", xlabel="cumulative upload (MB)",
            ylabel="test accuracy", name="09_accuracy_vs_mb", figures_dir=figures_dir).show()
plots.lines(metrics[metrics.label == "adaptive"], "round", "mean_bits", "label",
            title="Mean width of the aggregated uploads, adaptive policy", ylabel="mean bits",
            name="09_adaptive_bits", figures_dir=figures_dir).show()
runs_table = metrics.groupby(["label", "seed"], sort=False).agg(
    final_test_acc=("test_acc", "last"), sim_time=("sim_time", "max"), total_upload_mb=("cum_upload_mb", "max"),
    mean_round_s=("sim_seconds", "mean"), mean_bits=("mean_bits", "mean"), dropped=("dropped_clients", "sum"))
per_policy = runs_table.groupby("label", sort=False).agg(["mean", "std"])
per_policy.columns = [f"{c} ({s})" for c, s in per_policy.columns]
per_policy.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Time and upload to reach the target
#
# For each run: the first round at which the best accuracy so far reaches `target`, interpolated
# between evaluations as McMahan et al. count rounds (`measures.rounds_to_target`), and the same
# crossing read against the simulated clock and the cumulative upload (`measures.time_to_target`).
# Mean and standard deviation are over the seeds that reached the target; "reached" says how many did.

# %%
def reach_of(runs, level=target):
    """One row per run (label, seed): rounds, simulated time and upload to test accuracy `level`; NaN where not
    reached."""
    rows = [{"label": lab, "seed": seed, "rounds": time_to_target(m, level, x="round"),
             unit: time_to_target(m, level, x="sim_time"), "MB": time_to_target(m, level, x="cum_upload_mb")}
            for (lab, seed), m in runs.groupby(["label", "seed"], sort=False)]
    return pd.DataFrame(rows).astype({"rounds": float, unit: float, "MB": float})


reach = reach_of(metrics)
to_target = reach.groupby("label", sort=False).agg(
    reached=("rounds", lambda x: f"{x.notna().sum()} of {len(x)}"),
    rounds_mean=("rounds", "mean"), rounds_std=("rounds", "std"), **{f"{unit}_mean": (unit, "mean"),
                                                                       f"{unit}_std": (unit, "std")},
    MB_mean=("MB", "mean"), MB_std=("MB", "std"))
display(Markdown(f"**To reach test accuracy {target:g}** on `{link}` ({len(seed_list)} seed(s); std is empty with "
                 f"fewer than two seeds reaching it)"))
to_target.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Paired by seed: the adaptive policy's time to target minus each fixed width's, on the same clients and
# links (negative: adaptive was faster).

# %%
wide = reach.pivot(index="seed", columns="label", values=unit)
paired = pd.DataFrame({f"adaptive - {label[b]} ({unit})": wide["adaptive"] - wide[label[b]] for b in run_bits})
paired.round(4)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Adaptive against fixed INT16
#
# INT16 is Lee & Lee's width and the adaptive policy's widest. Each quantity below is the mean ±
# standard deviation over the seeds (for the target, over the seeds that reached it); the verdict pairs the
# seeds, since both policies of a seed share their clients, data and links.

# %%
def spread(values, digits=3):
    """'mean ± std (n)' of the finite values; 'not reached' if there are none."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return "not reached"
    return f"{v.mean():.{digits}g}" + (f" ± {v.std():.2g}" if len(v) > 1 else "") + f" ({len(v)})"


head = {}
for lab in ("adaptive", "INT16"):
    r, t = runs_table.loc[lab], reach[reach.label == lab]
    head[lab] = {"final test_acc": spread(r.final_test_acc, 4), f"{unit} to {target:g}": spread(t[unit]),
                 f"MB to {target:g}": spread(t.MB), "MB in total": spread(r.total_upload_mb),
                 "mean bits": spread(r.mean_bits), "mean round (s)": spread(r.mean_round_s)}
versus16 = pd.DataFrame(head)
def versus_int16(reach_, where="this run", level=target):
    """The claim 'adaptive bits beat INT16 in time to `level`', paired by seed over `reach_` (`reach_of` at that
    level): a sentence."""
    n_reached = {lab: int(reach_[reach_.label == lab][unit].notna().sum()) for lab in ("adaptive", "INT16")}
    both = reach_.pivot(index="seed", columns="label", values=unit)[["adaptive", "INT16"]].dropna()
    gain = both["adaptive"] - both["INT16"]  # paired by seed; negative: adaptive reached the target sooner
    claim = f"adaptive bits beat INT16 in time to {level:g}"
    n_seeds = reach_.seed.nunique()
    if both.empty:
        return (f"{claim}: **cannot be judged in {where}**, no seed reached {level:g} under both (adaptive in "
                f"{n_reached['adaptive']}, INT16 in {n_reached['INT16']} of {n_seeds} seed(s))")
    holds = gain.mean() < 0 and n_reached["adaptive"] >= n_reached["INT16"]
    verdict = (f"{claim}: **{'holds' if holds else 'does not hold'} in {where}**: {both['adaptive'].mean():.3g} "
               f"against {both['INT16'].mean():.3g} simulated {unit}, paired difference {gain.mean():+.3g}"
               + (f" ± {gain.std():.2g}" if len(gain) > 1 else "")
               + f" {unit} over {len(gain)} seed(s) (per seed: {', '.join(f'{g:+.3g}' for g in gain)}); the "
               f"target was reached in {n_reached['adaptive']} (adaptive) and {n_reached['INT16']} (INT16) of "
               f"{n_seeds} seed(s)")
    if len(gain) > 1 and abs(gain.mean()) < gain.std():
        verdict += "; the difference is smaller than its spread over the seeds"
    return verdict


verdict16 = versus_int16(reach)
display(Markdown(verdict16[0].upper() + verdict16[1:] + "."))
versus16

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The same runs, longer: reference runs
#
# In a short run the slower policies may not reach `target` at all. The project ships this grid carried
# further in `reference/links-adaptive-bits/` (`reference/README.md` gives its data, rounds, machine and the
# command that extends it). A reference is drawn only where it is exactly one of the runs above continued: the
# same config key (`reference.find`; every field but `num_rounds`, with an .npz file matched by its content).
# A reference begins as the live run, so at `target` it repeats the live run's crossing. Below, the same table
# and paired verdict at a level near convergence instead: nine tenths of the lowest best accuracy among the
# reference runs (printed), a level every one of them reaches.

# %%
ref_found = reference.longer({(lab, s): base.replace(seed=s, **changes) for lab, changes in policy.items()
                              for s in seed_list})
ref_labels = [lab for lab in policy if all((lab, s) in ref_found for s in seed_list)]  # every seed, to pair
ref_text = ""
if {"adaptive", "INT16"} <= set(ref_labels):
    ref_runs = reference.stacked({(lab, s): ref_found[lab, s] for lab in ref_labels for s in seed_list},
                                 ("label", "seed"))
    ref_runs["sim_time"], ref_runs["cum_upload_mb"] = ref_runs.cum_sim_seconds / per, ref_runs.cum_upload_bytes / 1e6
    ref_rounds = int(ref_runs["round"].max())
    plots.lines(plots.common_grid(ref_runs, "sim_time", "test_acc", "label"), "sim_time", "test_acc", "label",
                title=f"Reference runs: {ref_rounds} rounds on {link}, {len(seed_list)} seed(s)",
                xlabel=f"simulated {unit}", ylabel="test accuracy", name="09_reference", figures_dir=figures_dir).show()
    best_per_run = ref_runs.groupby(["label", "seed"]).test_acc.max()
    ref_level = round(0.9 * best_per_run.min(), 2)
    print(f"level: 0.9 x {best_per_run.min():.4f} (the lowest best accuracy of the {len(best_per_run)} reference "
          f"runs), rounded: {ref_level:g}")
    ref_reach = reach_of(ref_runs, ref_level)
    ref_text = versus_int16(ref_reach, where=f"the {ref_rounds}-round reference runs", level=ref_level)
    display(Markdown(ref_text[0].upper() + ref_text[1:] + "."))
    display(ref_reach.groupby("label", sort=False).agg(
        reached=("rounds", lambda x: f"{x.notna().sum()} of {len(x)}"), rounds_mean=("rounds", "mean"),
        **{f"{unit}_mean": (unit, "mean")}, MB_mean=("MB", "mean")).round(4))
else:
    print(f"No longer reference runs of the adaptive policy and INT16, on every seed, are published in reference/ "
          f"({len(ref_found)} of the {len(policy) * len(seed_list)} runs of this grid have one).")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Synchronous against asynchronous
#
# FedBuff (Nguyen et al. 2022, Algorithm 1) lets `concurrency` clients train at once, each from the model
# it last downloaded; the server applies an update as soon as $K$ = `buffer_size` uploads have arrived. It
# averages them, each down-weighted by its staleness $\tau_i$ (server updates since client $i$ downloaded),
# and steps by the server learning rate $\eta_g$ = `server_lr`:
#
# $$w \leftarrow w + \eta_g \sum_{i=1}^{K} c_i\, s(\tau_i)\, (w_i - w_{\text{base},i}), \qquad s(\tau) = \frac{1}{\sqrt{1 + \tau}}, \qquad c_i = \frac{1}{K}\ \text{(the paper)} \quad\text{or}\quad c_i = \frac{n_i}{\sum_j n_j}\ \text{(a variant)}$$
#
# FLSim, the authors' simulator, writes the client's update as before minus after training and steps
# $w - \eta_g \bar\Delta$: the same step with the opposite sign on $\Delta$. Its regime is many more clients in
# flight than $K$, so an update waits only for the first $K$ to arrive. Nobody waits for the slowest client,
# so a server update can come sooner than a synchronous round; a fast client can then contribute several times
# while a slow one trains once, and the slow one's update arrives stale. Whether updates came faster in this
# run is printed under the table. Below, at the same width, seed and links as the FedAvg run: FedBuff with
# this lesson's parameters (labelled "paper" when its weights are the paper's $1/K$), and fl_lib's earlier
# FedBuff, a variant ($c_i = n_i / \sum_j n_j$, $\eta_g = 1$, $K$ = concurrency = the clients per round).
# "Round" is then a server update; the comparison is at equal simulated time.

# %% slideshow={"slide_type": "subslide"}
m_round = base.clients_per_round
K, in_flight = buffer_size or m_round, concurrency or m_round
updates = fedbuff_rounds or -(-num_rounds * m_round // K)  # 0: the FedAvg run's client trainings, in updates of K
if buffer_weights == "uniform":
    main_label = f"FedBuff (paper: uniform 1/K, eta_g={server_lr:g}, K={K}, concurrency={in_flight})"
else:
    main_label = f"FedBuff variant: n-weighted, eta_g={server_lr:g}, K={K}, concurrency={in_flight}"
earlier_label = f"FedBuff variant: n-weighted, eta_g=1, K=concurrency={m_round} (fl_lib's earlier rule)"
fedbuff_grid = {main_label: dict(num_rounds=updates, buffer_size=buffer_size, concurrency=concurrency,
                                  server_lr=server_lr, buffer_weights=buffer_weights),
                earlier_label: dict(num_rounds=fedbuff_rounds or num_rounds, buffer_weights="samples")}
fedbuff_base = base.replace(algorithm="fedbuff", bits=ref_bits)
main_cfg, earlier_cfg = (fedbuff_base.replace(**fedbuff_grid[lab]) for lab in (main_label, earlier_label))
if main_cfg.key() == earlier_cfg.key():  # the key leaves out num_rounds
    del fedbuff_grid[earlier_label]  # this lesson's parameters are the earlier rule itself: run it once
buffer_of = {main_label: K, earlier_label: m_round, "FedAvg": m_round}  # uploads per update (or round)
buffs = sweep(fedbuff_base, {"label": fedbuff_grid, "seed": seed0}, root=results_dir, workers=workers)
sync = metrics[(metrics.label == label[ref_bits]) & (metrics.seed == seed0)].assign(label="FedAvg")
async_runs = pd.concat([sync, buffs], ignore_index=True)
async_runs["sim_time"] = async_runs.cum_sim_seconds / per
plots.lines(async_runs, "sim_time", "test_acc", "label",
            title=f"FedAvg and FedBuff, {label[ref_bits]} on {link} (seed {seed0})", xlabel=f"simulated {unit}",
            ylabel="test accuracy", name="09_fedbuff", figures_dir=figures_dir).show()
plots.lines(buffs, "round", "mean_staleness", "label",
            title="FedBuff: mean staleness of each server update", xlabel="server update",
            ylabel="mean staleness", name="09_staleness", figures_dir=figures_dir).show()
common_end = async_runs.groupby("label").sim_time.max().min()  # the span every run covers
by_end = f"best test_acc by {common_end:.3g} {unit}"
labels_async = list(dict.fromkeys(async_runs.label))
async_table = pd.DataFrame({
    "updates": async_runs.groupby("label")["round"].max(),
    "uploads": {lab: int(async_runs[async_runs.label == lab]["round"].max()) * buffer_of[lab] for lab in labels_async},
    f"simulated {unit}": async_runs.groupby("label").sim_time.max(),
    "mean update interval (s)": async_runs.groupby("label").sim_seconds.mean(),
    "mean staleness": async_runs.groupby("label").mean_staleness.mean(),
    by_end: {lab: best_acc_until(async_runs[async_runs.label == lab], "sim_time", common_end) for lab in labels_async},
    "final test_acc": async_runs.dropna(subset=["test_acc"]).groupby("label").test_acc.last(),
    f"{unit} to {target:g}": time_to_target_by(async_runs, "label", target, x="sim_time")}).reindex(labels_async)
sync_interval = async_table.loc["FedAvg", "mean update interval (s)"]
display(Markdown("\n".join(
    f"* **{lab}**: a server update every {r['mean update interval (s)']:.3g} s on average against a FedAvg round "
    f"every {sync_interval:.3g} s; updates come faster: **"
    f"{'holds' if r['mean update interval (s)'] < sync_interval else 'does not hold'}** in this run "
    f"({sync_interval / r['mean update interval (s)']:.2g} times as many per second)."
    for lab, r in async_table.drop(index="FedAvg").iterrows())))
async_table.round(4)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What if the same runs had other links?
#
# With fixed bits and no deadline, the clock never changes what is trained: every client is kept and
# uploads at `bits`. So a finished run's exact clock on any other profile follows from its config alone:
# `federation.replay_clock(cfg, link)` replays the sampled clients, link draws and encoded sizes of every
# round, without training. Its replay on the run's own `link` must give the run's own `sim_seconds` (the
# check printed below). The adaptive policy and deadlines change who is aggregated, so they must be run.

# %% slideshow={"slide_type": "subslide"}
data_by_seed = {s: load_dataset(dataset, data_root, seed=s) for s in seed_list}  # loaded once, not per replay
frames, check = [], 0.0
for seed in seed_list:
    for b in bits_list:
        cfg = base.replace(bits=b, seed=seed)
        m = metrics[(metrics.label == label[b]) & (metrics.seed == seed)]
        check = max(check, float(np.max(np.abs(np.array(replay_clock(cfg, link, data_by_seed[seed]))
                                                - m.sim_seconds.to_numpy()))))
        seconds = np.cumsum(replay_clock(cfg, what_if_link, data_by_seed[seed]))
        frames.append(m.assign(cum_sim_seconds=seconds, link=what_if_link))
print(f"replay on {link} against the runs' own clocks: largest difference {check:.3g} s; the replay reproduces "
      f"them (within 1e-9 s): {'holds' if check <= 1e-9 else 'does not hold'} in this run")
what_if = pd.concat(frames, ignore_index=True)
w_unit, w_per = ("hours", 3600.0) if what_if.cum_sim_seconds.max() >= 3600 else ("minutes", 60.0)
what_if["sim_time"] = what_if.cum_sim_seconds / w_per
plots.lines(plots.common_grid(what_if, "sim_time", "test_acc", "label"), "sim_time", "test_acc", "label",
            title=f"The same runs on {what_if_link} (replayed clock)", xlabel=f"simulated {w_unit}",
            ylabel="test accuracy", name="09_what_if", figures_dir=figures_dir).show()
per_run = what_if.groupby(["label", "seed"], sort=False)
what_if_reach = time_to_target_by(what_if, ["label", "seed"], target, x="sim_time")
what_if_table = pd.DataFrame({
    f"{link}: {unit} per run": metrics.groupby(["label", "seed"], sort=False).sim_time.max()
    .groupby("label", sort=False).mean().reindex([label[b] for b in bits_list]),
    f"{what_if_link}: {w_unit} per run": per_run.sim_time.max().groupby("label", sort=False).mean(),
    f"{what_if_link}: {w_unit} to {target:g}": what_if_reach.groupby("label", sort=False).mean(),
    "reached": what_if_reach.notna().groupby("label", sort=False).sum()})
what_if_table.round(4)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## A widget: move the link spread or the deadline
#
# The sliders set the spread $\sigma$ of a `lognormal:MEDIAN,SIGMA` link (median: the `link` profile's
# uplink) and the deadline (0: none, so the adaptive budget is the slowest client at its own width). The
# left panel redraws every client's upload time at the fixed widths, the right one the widths the adaptive
# policy would pick in every round ("late": not even `min_bits` fit); the table gives the mean round and the
# share of clients dropped. It only redraws, with the same `clock_stats` as above: nothing is trained.

# %% tags=["widget"] slideshow={"slide_type": "subslide"}
explorer = LinkExplorer(fed, bit_widths=bits_list, num_rounds=num_rounds, min_bits=min_bits)
explorer

# %%
print(f"{explorer.link()}, deadline {explorer.deadline.value:g} s:")
explorer.summary.round(3)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The headline numbers
#
# Written from the runs above.

# %%
def fmt(mean, std, digits=3):
    return "not reached" if pd.isna(mean) else f"{mean:.{digits}g}" + ("" if pd.isna(std) else f" ± {std:.2g}")


summary = clock_summary(clock)
text = [f"**Setup.** {base.model} on {Path(dataset).stem}, {num_rounds} rounds, {num_clients} clients, link "
        f"`{link}`, {len(seed_list)} seed(s). On the first seed's links a synchronous round lasts on average "
        + ", ".join(f"{summary.loc[p, 'mean round (s)']:.3g} s {'under' if p == 'adaptive' else 'at'} {p}"
                    for p in summary.index)
        + f"; the adaptive policy (min_bits {min_bits}) drops {summary.loc['adaptive', 'dropped (%)']:.0f}% of the "
        f"client-rounds and gives the clients {policy_clock.bits.mean():.3g} bits on average, the slowest client of "
        f"a round {slow.bits.mean():.3g} (the earlier budget, the slowest client at {min(allowed)} bits: "
        f"{policy_clock['bits (earlier budget)'].mean():.3g} and {slow['bits (earlier budget)'].mean():.3g}). The "
        f"slowest client's round is {stragglers['round / median client'].iloc[0]:.2g} times the median client's, "
        f"and its upload is {stragglers['slowest client: upload'].iloc[0]:.2g} s of "
        f"{stragglers['round (s)'].iloc[0]:.3g} s."]
if len(sa_clock):
    text.append("**Secure aggregation on the clock** (first seed's links): "
                + "; ".join(f"{u} on `{lk}`: uploads {r['bytes ratio']:.2f} times larger, rounds "
                            f"{r['round ratio']:.2f} times longer" for (lk, u), r in sa_clock.iterrows()) + ".")
lines_out = []
for lab in policies:
    row = to_target.loc[lab]
    lines_out.append(f"* **{lab}**: reached {target:g} in {row.reached} seed(s); "
                     f"{fmt(row[f'{unit}_mean'], row[f'{unit}_std'])} simulated {unit}, "
                     f"{fmt(row.MB_mean, row.MB_std)} MB, {fmt(row.rounds_mean, row.rounds_std)} rounds; final "
                     f"accuracy {per_policy.loc[lab, 'final_test_acc (mean)']:.4f}.")
text.append(f"**Time to {target:g} test accuracy** (mean ± std over the seeds that reached it):\n\n"
            + "\n".join(lines_out))
reached = reach.groupby("label", sort=False)[unit].apply(lambda x: int(x.notna().sum()))
n_seeds = len(seed_list)


def against(other):
    """Adaptive against `other`, paired over the seeds where both reached the target: a sentence."""
    both = wide[["adaptive", other]].dropna()
    if both.empty:
        return (f"adaptive and {other} never both reached {target:g} in one seed, so no paired comparison; "
                f"adaptive reached it in {reached['adaptive']} of {n_seeds} seed(s), {other} in {reached[other]}")
    a_mean, o_mean = both["adaptive"].mean(), both[other].mean()
    faster = a_mean < o_mean
    word = ("shortened" if faster and reached["adaptive"] >= reached[other] else
            "shortened, where it reached the target at all," if faster else "did not shorten")
    out = (f"against {other}, adaptive bits **{word}** the time to {target:g}: {a_mean:.3g} against {o_mean:.3g} "
           f"simulated {unit} ({100 * (a_mean / o_mean - 1):+.0f}%), paired over the {len(both)} seed(s) where both "
           f"reached it (per seed {', '.join(f'{v:+.3g}' for v in both['adaptive'] - both[other])} {unit})")
    if reached["adaptive"] != reached[other]:
        out += f"; adaptive reached it in {reached['adaptive']} of {n_seeds} seed(s), {other} in {reached[other]}"
    return out


ref = label[ref_bits]
fixed_times = to_target[f"{unit}_mean"].drop("adaptive").dropna()
if reached["adaptive"] == 0:
    verdict = (f"The adaptive policy did not reach {target:g} in any seed within {num_rounds} rounds, so on these "
               f"links it did not shorten the time to target (the fixed widths reached it in "
               + ", ".join(f"{reached[label[b]]} ({label[b]})" for b in bits_list) + f" of {n_seeds} seed(s)).")
else:
    verdict = against(ref)[0].upper() + against(ref)[1:] + "."
    best = fixed_times.idxmin() if len(fixed_times) else None
    if best is not None and best != ref:
        verdict += f" The fastest fixed width was {best}: " + against(best) + "."
text.append(verdict)
text.append(f"**Adaptive against INT16.** {verdict16[0].upper() + verdict16[1:]}.")
if ref_text:
    text.append(f"**The same over the reference runs.** {ref_text[0].upper() + ref_text[1:]}.")
dl = deadline_table
text.append(f"**Deadline.** At {label[ref_bits]} with seed {seed0}, a {d:g} s deadline dropped "
            f"{int(dl['dropped client-rounds'].max())} client-rounds ({dl['share dropped'].max():.0%}); final accuracy "
            + " against ".join(f"{dl.loc[i, 'final test_acc']:.4f} ({i})" for i in dl.index)
            + ", in " + " against ".join(f"{dl.loc[i, f'simulated {unit}']:.3g}" for i in dl.index)
            + f" simulated {unit}.")
at = async_table
fedbuff_lines = [f"* **{lab}**: {int(at.loc[lab, 'updates'])} server updates ({int(at.loc[lab, 'uploads'])} uploads) in "
                 f"{at.loc[lab, f'simulated {unit}']:.3g} {unit}, mean staleness {at.loc[lab, 'mean staleness']:.2f}; "
                 f"best accuracy by {common_end:.3g} {unit}: {at.loc[lab, by_end]:.4f} (FedAvg: "
                 f"{at.loc['FedAvg', by_end]:.4f}), final {at.loc[lab, 'final test_acc']:.4f}."
                 for lab in fedbuff_grid]
ahead = at.loc[main_label, by_end] > at.loc["FedAvg", by_end]
text.append(f"**FedBuff** (seed {seed0}, {label[ref_bits]}; the FedAvg run reached "
            f"{at.loc['FedAvg', by_end]:.4f} by {common_end:.3g} {unit}):\n\n" + "\n".join(fedbuff_lines)
            + f"\n\n{main_label} ahead of FedAvg at equal simulated time ({common_end:.3g} {unit}): "
            + ("**holds**" if ahead else "**does not hold**") + " in this run.")
if earlier_label in fedbuff_grid:
    better = at.loc[main_label, by_end] > at.loc[earlier_label, by_end]
    text[-1] += (f" Ahead of fl_lib's earlier rule at that time ({at.loc[main_label, by_end]:.4f} against "
                 f"{at.loc[earlier_label, by_end]:.4f}): " + ("**holds**" if better else "**does not hold**") + ".")
wt = what_if_table
text.append(f"**On `{what_if_link}` links** (replayed, same runs): "
            + "; ".join(f"{lab} {wt.iloc[:, 1][lab]:.3g} {w_unit} for {num_rounds} rounds, "
                        f"{fmt(wt.iloc[:, 2][lab], float('nan'))} {w_unit} to {target:g}" for lab in wt.index) + ".")
display(Markdown("### In short\n\n" + "\n\n".join(text)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each exercise asks for a prediction first. Write it down, change the variable at the top of the code cell,
# run the cell, and only then open the answer: the cell computes it, nothing in it is written in advance. Both
# replay or plan the clock of this lesson's runs: nothing is trained.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1: the same runs on another link
#
# **Predict:** on the link `link_try`, which fixed bit width of `bit_widths` reaches `target` in the least
# simulated time? Does the narrowest width's lead over the widest grow or shrink against the lesson's `link`?
# Change `link_try` (`mobile`, `iot`, or `lognormal:MEDIAN_MBITS,SIGMA`) and run: the stored runs of the first
# seed are replayed on it.

# %%
from fl_lib.study.exercises import answer, holds

link_try = "lognormal:1,1.5"  # change me: a link profile, as the link parameter takes it
seed_x = seed_list[0]
replayed = []
for b in bits_list:
    m = metrics[(metrics.label == label[b]) & (metrics.seed == seed_x)]
    for lk in dict.fromkeys((link, link_try)):  # once each, also when link_try is link
        secs = np.cumsum(replay_clock(base.replace(bits=b, seed=seed_x), lk, data_by_seed[seed_x]))
        timed = m.assign(sim_h=secs / 3600)
        replayed.append({"link": lk, "width": label[b], "hours per run": secs[-1] / 3600,
                         f"hours to {target:g}": time_to_target(timed, target, x="sim_h")})
replayed = pd.DataFrame(replayed).set_index(["link", "width"])
display(replayed.round(4))
on_try = replayed.loc[link_try]
reach_try = on_try[f"hours to {target:g}"].dropna()
wide, narrow = label[max(bits_list)], label[min(bits_list)]
lead_on = {lk: replayed.loc[(lk, wide), "hours per run"] / replayed.loc[(lk, narrow), "hours per run"]
           for lk in (link, link_try)}
display(answer(
    (f"On `{link_try}` the first to reach {target:g} is {reach_try.idxmin()}, in {reach_try.min():.3g} simulated hours "
     f"(the others: " + (", ".join(f"{w} {h:.3g}" for w, h in reach_try.drop(reach_try.idxmin()).items()) or "none")
     + "). " if len(reach_try) else f"On `{link_try}` no width reached {target:g} within {num_rounds} rounds. ")
    + f"The same {num_rounds} rounds take {wide} {lead_on[link_try]:.3g} times as long as {narrow} on `{link_try}`, "
    f"against {lead_on[link]:.3g} times on `{link}`: the narrowest width's lead grows on `{link_try}` "
    f"{holds(lead_on[link_try] > lead_on[link])} in this run."))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2: half the bits, half the round?
#
# **Predict:** on the lesson's `link`, does a round at `bits_try` bits take that width's share of an FP32 round's
# time (in proportion to the bits), or more? Which part of a client's time does not shrink? Change `bits_try` and
# run: the clock is planned for every round, nothing is trained.

# %%
bits_try = 4  # change me: the upload bit width, 2..16
clock_try = clock_stats(fed, link, 0.0, [32, bits_try], num_rounds, min_bits=min_bits)
summary_try = clock_summary(clock_try)
r32, rb = summary_try.loc[width_label(32), "mean round (s)"], summary_try.loc[width_label(bits_try), "mean round (s)"]
slow_b = clock_try[clock_try.policy == width_label(bits_try)]
slow_b = slow_b.loc[slow_b.groupby("round").total_s.idxmax()]
share = {p.removesuffix("_s"): slow_b[p].mean() / slow_b.total_s.mean() for p in parts}
display(summary_try.round(3))
display(answer(
    f"On `{link}`, mean round {rb:.3g} s at {bits_try} bits against {r32:.3g} s at FP32: a ratio of {rb / r32:.3g}, "
    f"against {bits_try / 32:.3g} for the bits. The round shrinks in proportion to the bits: "
    f"{holds(rb / r32 <= bits_try / 32 * 1.01)} in this run. Median upload {summary_try.loc[width_label(bits_try), 'median upload (s)']:.3g} s "
    f"against {summary_try.loc[width_label(32), 'median upload (s)']:.3g} s.\n\n"
    f"The slowest client's time at {bits_try} bits, mean over rounds: "
    + ", ".join(f"{part} {100 * s:.0f}%" for part, s in share.items())
    + ". Only the upload part shrinks with the bits; download, compute and latency stay."))
