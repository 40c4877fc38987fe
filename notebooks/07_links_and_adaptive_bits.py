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

# %% [markdown]
# # 07 · Time, not just bytes: client links, stragglers and adaptive bit widths
#
# Lessons 04 and 05 count bytes. A halved upload matters to a person waiting for a model only if it
# shortens the rounds, and a round's length is set by the clients' links and devices. Lee & Lee motivate
# INT16 by "communication-constrained environments" and name their next step: choose each client's bit
# width from its own link (adaptive per-client quantization). McMahan et al.'s FedAvg waits for every
# sampled client, so one slow link stalls a round; buffered asynchronous aggregation (FedBuff, Nguyen et
# al. 2022, *Federated Learning with Buffered Asynchronous Aggregation*, AISTATS) does not wait.
#
# Here every run has a simulated clock (`fl_lib/links.py`): each client gets a link and a device drawn
# from a profile with cited numbers, and metrics.csv gains `sim_seconds`, `cum_sim_seconds`, `mean_bits`,
# `dropped_clients` and `mean_staleness`. The clock is a deterministic function of the config and the
# seed, so paired runs (same seed, different upload policy) share their clients, data and links.

# %% tags=["parameters"]
preset: str = "quick"  # starting config: quick (small CNN, 1 local epoch) or paper (SqueezeNet 1.0, 5 epochs)
dataset: str = "cifar10"  # cifar10 (torchvision downloads it into data_root), synthetic, or an .npz file
data_root: str = ""  # folder torchvision downloads into; empty: the project's data/
num_rounds: int = 30  # communication rounds of every synchronous run
num_clients: int = 10  # K, clients, all sampled every round
alpha: float = 0.5  # Dirichlet concentration of the label split
link: str = "mobile"  # link profile of every run: mobile, iot, or lognormal:MEDIAN_MBITS,SIGMA
what_if_link: str = "iot"  # a second profile whose clock is replayed from the same runs, without training
bit_widths: str = "32,16,8"  # fixed upload bit widths, comma-separated, set against the adaptive policy
seeds: str = "0,1"  # comma-separated seeds; every bit width and the adaptive policy run once per seed
target: float = 0.3  # test accuracy whose simulated time and upload to reach are tabled
deadline: float = 0.0  # seconds a round waits in the deadline run (first seed); 0: the median FP32 client time
fedbuff_rounds: int = 30  # server updates of the FedBuff run (first seed)
buffer_size: int = 0  # FedBuff uploads per server update; 0: the clients per round
results_dir: str = ""  # cached runs, shared by all lessons; empty: the project's data/runs/
figures_dir: str = ""  # where static PNGs are written; empty: the project's figures/
device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
workers: int = 0  # processes that compute this lesson's runs side by side; 0: one per core

# %%
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from fl_lib import config, lesson, links, plots
from fl_lib.config import parse_list, parse_seeds
from fl_lib.data import load_dataset
from fl_lib.fedavg import Federation, replay_clock
from fl_lib.metrics import rounds_to_target
from fl_lib.results import run, run_many
from fl_lib.widgets import LinkExplorer, clock_stats, clock_summary, width_label

lesson.setup("lee", "mcmahan")
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

# %% [markdown]
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

# %% [markdown]
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

# %%
fed = Federation(base.replace(seed=seed_list[0]))
E = base.local_epochs
sizes = pd.DataFrame({"bits": bits_list, "upload U (bytes)": [fed.upload_size(b) for b in bits_list]})
print(f"D = {fed.model_bytes:,} bytes (one float32 broadcast); F = {fed.flops_per_sample():,} training FLOPs per "
      f"sample; E = {E}; n_k from {min(fed.sizes)} to {max(fed.sizes)} samples")
display(sizes.set_index("bits"))
clock = clock_stats(fed, link, 0.0, bits_list, num_rounds)
fixed_clock = clock[clock.policy != "adaptive"]
plots.histogram(fixed_clock, "upload_s", "policy", log_x=True, xlabel="upload seconds 8 U_k / up_k",
                ylabel="client-rounds", title=f"Upload time of every client and round on {link} ({base.model})",
                name="07_upload_times", figures_dir=figures_dir).show()
clock_summary(clock).round(3)

# %% [markdown]
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

# %% [markdown]
# A **deadline** $d > 0$ stops the wait: the clients with $T_k > d$ are dropped from the round (their work
# is thrown away, as in partial participation) and the round lasts $d$ if anyone was dropped:
#
# $$\text{kept} = \{k : T_k \le d\}, \qquad T_{\text{round}} = d \ \text{if any client is dropped, else} \ \max_k T_k$$
#
# With `deadline = 0` the run uses the median client time at FP32 over all rounds, so about half the
# clients miss it. Both runs below use the first seed and the same links, so they differ only by the
# deadline. If the same clients miss it every round (a slow device is slow in every round), their data
# is never learned from.

# %%
seed0 = seed_list[0]
d = deadline if deadline > 0 else float(f"{fp32.total_s.median():.2g}")
pair = {f"{width_label(ref_bits)}, no deadline": base.replace(bits=ref_bits, seed=seed0),
        f"{width_label(ref_bits)}, deadline {d:g} s": base.replace(bits=ref_bits, seed=seed0, deadline=d)}
pair_runs = run_many(pair.values(), root=results_dir, workers=workers)
deadline_runs = pd.concat([r.metrics.assign(label=name, seed=seed0) for name, r in zip(pair, pair_runs)],
                          ignore_index=True)
total_s = deadline_runs.groupby("label").cum_sim_seconds.max().max()
unit, per = ("hours", 3600.0) if total_s >= 3600 else ("minutes", 60.0)  # the clock's unit in every figure
deadline_runs["sim_time"] = deadline_runs.cum_sim_seconds / per
plots.lines(deadline_runs, "sim_time", "test_acc", "label", title=f"A deadline on {link} (seed {seed0})",
            xlabel=f"simulated {unit}", ylabel="test accuracy", name="07_deadline", figures_dir=figures_dir).show()


def time_to(m, x, target):
    """x (a clock or byte counter) where the best accuracy so far first reaches target (interpolated), else None."""
    return rounds_to_target(m.dropna(subset=["test_acc"]).set_index(x).test_acc, target)


def reach_by(frame, by, target, x="sim_time"):
    """time_to for every group of `frame` as a float Series (NaN where the target was not reached)."""
    reach = {key: time_to(m, x, target) for key, m in frame.groupby(by, sort=False)}
    index = pd.MultiIndex.from_tuples(reach, names=by) if isinstance(by, list) else pd.Index(reach, name=by)
    return pd.Series([float("nan") if v is None else v for v in reach.values()], index=index, dtype=float)


deadline_table = pd.DataFrame({
    "final test_acc": deadline_runs.groupby("label").test_acc.last(),
    f"simulated {unit}": deadline_runs.groupby("label").sim_time.max(),
    "dropped client-rounds": deadline_runs.groupby("label").dropped_clients.sum(),
    f"{unit} to {target:g}": reach_by(deadline_runs, "label", target)})
deadline_table.round(4)

# %% [markdown]
# ## Fixed against adaptive bits
#
# With `bits_policy = "adaptive"` each client picks, every round, the widest width whose upload still fits
# the round's time budget $\tau$, given the rest of its time at that round:
#
# $$b_k = \max\Big\{ b \in \{16, 15, \dots, 2\} : T_k - \frac{8 U_k(16)}{\mathrm{up}_k} + \frac{8 U_k(b)}{\mathrm{up}_k} \le \tau \Big\}$$
#
# $\tau$ is the deadline, or without one the slowest sampled client's $T_k$ at 2 bits (`links.default_budget`), so that without a deadline nobody is dropped.
# With a deadline, a client that cannot fit even 2 bits is a straggler and is dropped; those are clients
# whose download, compute and latency alone exceed $\tau$. A device's speed does not change between
# rounds, so a client slow to compute would be late in most rounds and its data would rarely reach the
# model. That is why, without a deadline, $\tau$ is the slowest client's own time at 2 bits: everyone
# fits, and the policy saves time only by narrowing uploads. Below, from the clock alone, which clients of
# the first seed the policy drops and how much data they hold.
# Then each seed runs every fixed width and the adaptive policy on the same clients and links (paired runs).

# %%
adaptive_clock = clock[clock.policy == "adaptive"]
late_share = 1 - adaptive_clock.groupby("client").kept.mean()  # the share of its rounds each client was late
often_late = [int(k) for k in sorted(late_share[late_share > 0.5].index)]
late_data = sum(fed.sizes[k] for k in often_late) / sum(fed.sizes)
print(f"adaptive, seed {seed_list[0]}: budget = slowest client at 2 bits; clients late in more than half of their "
      f"rounds: {often_late} (they hold {100 * late_data:.0f}% of the training data)")
pd.DataFrame({"late (% of rounds)": 100 * late_share, "n_k": [fed.sizes[k] for k in late_share.index],
              "mean compute (s)": adaptive_clock.groupby("client").compute_s.mean()}).round(2).T

# %%
label = {b: width_label(b) for b in bits_list}
grid = {(label[b], seed): base.replace(bits=b, seed=seed) for seed in seed_list for b in bits_list}
grid.update({("adaptive", seed): base.replace(bits=32, bits_policy="adaptive", seed=seed) for seed in seed_list})
runs = run_many(grid.values(), root=results_dir, workers=workers)  # in parallel, one process per core; cached
metrics = pd.concat([r.metrics.assign(label=name, seed=seed) for (name, seed), r in zip(grid, runs)],
                    ignore_index=True)
metrics["sim_time"] = metrics.cum_sim_seconds / per
metrics["cum_upload_mb"] = metrics.cum_upload_bytes / 1e6
policies = list(dict.fromkeys(metrics.label))

# %% [markdown]
# Each seed has its own clock, so the curves below are first interpolated onto one time (or megabyte) grid
# per policy (`plots.common_grid`), then drawn as the mean over seeds with a band of one standard deviation.

# %%
plots.lines(plots.common_grid(metrics, "sim_time", "test_acc", "label"), "sim_time", "test_acc", "label",
            title=f"Test accuracy against simulated time on {link}", xlabel=f"simulated {unit}",
            ylabel="test accuracy", name="07_accuracy_vs_time", figures_dir=figures_dir).show()
plots.lines(plots.common_grid(metrics, "cum_upload_mb", "test_acc", "label"), "cum_upload_mb", "test_acc", "label",
            title="Test accuracy against cumulative upload", xlabel="cumulative upload (MB)",
            ylabel="test accuracy", name="07_accuracy_vs_mb", figures_dir=figures_dir).show()
plots.lines(metrics[metrics.label == "adaptive"], "round", "mean_bits", "label",
            title="Mean width of the aggregated uploads, adaptive policy", ylabel="mean bits",
            name="07_adaptive_bits", figures_dir=figures_dir).show()
runs_table = metrics.groupby(["label", "seed"], sort=False).agg(
    final_test_acc=("test_acc", "last"), sim_time=("sim_time", "max"), total_upload_mb=("cum_upload_mb", "max"),
    mean_round_s=("sim_seconds", "mean"), mean_bits=("mean_bits", "mean"), dropped=("dropped_clients", "sum"))
per_policy = runs_table.groupby("label", sort=False).agg(["mean", "std"])
per_policy.columns = [f"{c} ({s})" for c, s in per_policy.columns]
per_policy.round(4)

# %% [markdown]
# ### Time and upload to reach the target
#
# For each run: the first round at which the best accuracy so far reaches `target`, interpolated between
# evaluations as McMahan et al. count rounds (`metrics.rounds_to_target`), and the same crossing read
# against the simulated clock and the cumulative upload. Mean and standard deviation are over the seeds
# that reached the target; "reached" says how many did.

# %%
rows = []
for (lab, seed), m in metrics.groupby(["label", "seed"], sort=False):
    rows.append({"label": lab, "seed": seed, "rounds": time_to(m, "round", target),
                 unit: time_to(m, "sim_time", target), "MB": time_to(m, "cum_upload_mb", target)})
reach = pd.DataFrame(rows).astype({"rounds": float, unit: float, "MB": float})
to_target = reach.groupby("label", sort=False).agg(
    reached=("rounds", lambda x: f"{x.notna().sum()} of {len(x)}"),
    rounds_mean=("rounds", "mean"), rounds_std=("rounds", "std"), **{f"{unit}_mean": (unit, "mean"),
                                                                       f"{unit}_std": (unit, "std")},
    MB_mean=("MB", "mean"), MB_std=("MB", "std"))
display(Markdown(f"**To reach test accuracy {target:g}** on `{link}` ({len(seed_list)} seed(s); std is empty with "
                 f"fewer than two seeds reaching it)"))
to_target.round(4)

# %% [markdown]
# Paired by seed: the adaptive policy's time to target minus each fixed width's, on the same clients and
# links (negative: adaptive was faster).

# %%
wide = reach.pivot(index="seed", columns="label", values=unit)
paired = pd.DataFrame({f"adaptive - {label[b]} ({unit})": wide["adaptive"] - wide[label[b]] for b in bits_list})
paired.round(4)

# %% [markdown]
# ## Synchronous against asynchronous
#
# FedBuff lets the clients train continuously from the model they last downloaded; the server applies an
# update as soon as `buffer_size` uploads have arrived, each weighted by its data and down-weighted by its
# staleness $\tau_i$ (server updates since client $i$ downloaded):
#
# $$w \leftarrow w + \frac{\sum_i n_i\, s(\tau_i)\, (w_i - w_{\text{base},i})}{\sum_i n_i}, \qquad s(\tau) = \frac{1}{\sqrt{1 + \tau}}$$
#
# Nobody waits for the slowest client, so updates come faster, but fast clients contribute more often and
# the slow ones' updates arrive stale. Below, one FedBuff run and the FedAvg run at the same width, seed
# and links; "round" is then a server update. The comparison is at equal simulated time.

# %%
buff = run(base.replace(algorithm="fedbuff", bits=ref_bits, seed=seed0, num_rounds=fedbuff_rounds,
                        buffer_size=buffer_size), root=results_dir).metrics.assign(label="FedBuff", seed=seed0)
sync = metrics[(metrics.label == label[ref_bits]) & (metrics.seed == seed0)].assign(label="FedAvg")
async_runs = pd.concat([sync, buff], ignore_index=True)
async_runs["sim_time"] = async_runs.cum_sim_seconds / per
plots.lines(async_runs, "sim_time", "test_acc", "label",
            title=f"FedAvg and FedBuff, {label[ref_bits]} on {link} (seed {seed0})", xlabel=f"simulated {unit}",
            ylabel="test accuracy", name="07_fedbuff", figures_dir=figures_dir).show()
plots.lines(buff, "round", "mean_staleness", "label", title="FedBuff: mean staleness of each server update",
            xlabel="server update", ylabel="mean staleness", name="07_staleness", figures_dir=figures_dir).show()
common_end = min(sync.sim_time.max(), buff.cum_sim_seconds.max() / per)  # the span both runs cover


def acc_at(m, x_end):
    """Best test accuracy so far at simulated time x_end (the last evaluation at or before it)."""
    m = m.dropna(subset=["test_acc"])
    return m[m.cum_sim_seconds / per <= x_end + 1e-12].test_acc.max()


async_table = pd.DataFrame({
    "updates": async_runs.groupby("label")["round"].max(),
    f"simulated {unit}": async_runs.groupby("label").sim_time.max(),
    "mean update interval (s)": async_runs.groupby("label").sim_seconds.mean(),
    "mean staleness": async_runs.groupby("label").mean_staleness.mean(),
    f"best test_acc by {common_end:.3g} {unit}": {"FedAvg": acc_at(sync, common_end), "FedBuff": acc_at(buff, common_end)},
    f"{unit} to {target:g}": reach_by(async_runs, "label", target)})
async_table.round(4)

# %% [markdown]
# ## What if the same runs had other links?
#
# With fixed bits and no deadline, the clock never changes what is trained: every client is kept and
# uploads at `bits`. So a finished run's exact clock on any other profile follows from its config alone:
# `fedavg.replay_clock(cfg, link)` replays the sampled clients, link draws and encoded sizes of every
# round, without training. Its replay on the run's own `link` must give the run's own `sim_seconds` (the
# check printed below). The adaptive policy and deadlines change who is aggregated, so they must be run.

# %%
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
print(f"replay on {link} against the runs' own clocks: largest difference {check:.3g} s")
what_if = pd.concat(frames, ignore_index=True)
w_unit, w_per = ("hours", 3600.0) if what_if.cum_sim_seconds.max() >= 3600 else ("minutes", 60.0)
what_if["sim_time"] = what_if.cum_sim_seconds / w_per
plots.lines(plots.common_grid(what_if, "sim_time", "test_acc", "label"), "sim_time", "test_acc", "label",
            title=f"The same runs on {what_if_link} (replayed clock)", xlabel=f"simulated {w_unit}",
            ylabel="test accuracy", name="07_what_if", figures_dir=figures_dir).show()
per_run = what_if.groupby(["label", "seed"], sort=False)
what_if_reach = reach_by(what_if, ["label", "seed"], target)
what_if_table = pd.DataFrame({
    f"{link}: {unit} per run": metrics.groupby(["label", "seed"], sort=False).sim_time.max()
    .groupby("label", sort=False).mean().reindex([label[b] for b in bits_list]),
    f"{what_if_link}: {w_unit} per run": per_run.sim_time.max().groupby("label", sort=False).mean(),
    f"{what_if_link}: {w_unit} to {target:g}": what_if_reach.groupby("label", sort=False).mean(),
    "reached": what_if_reach.notna().groupby("label", sort=False).sum()})
what_if_table.round(4)

# %% [markdown]
# ## A widget: move the link spread or the deadline
#
# The sliders set the spread $\sigma$ of a `lognormal:MEDIAN,SIGMA` link (median: the `link` profile's
# uplink) and the deadline (0: none, so the adaptive budget is the slowest client at 2 bits). The left
# panel redraws every client's upload time at the fixed widths, the right one the widths the adaptive
# policy would pick in every round ("late": not even 2 bits fit); the table gives the mean round and the
# share of clients dropped. It only redraws, with the same `clock_stats` as above: nothing is trained.

# %% tags=["widget"]
explorer = LinkExplorer(fed, bit_widths=bits_list, num_rounds=num_rounds)
explorer

# %%
print(f"{explorer.link()}, deadline {explorer.deadline.value:g} s:")
explorer.summary.round(3)

# %% [markdown]
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
        + f"; the adaptive policy drops {summary.loc['adaptive', 'dropped (%)']:.0f}% of the client-rounds as "
        f"stragglers and gives the others {summary.loc['adaptive', 'mean bits of kept clients']:.3g} bits on "
        f"average; clients {often_late} were late in more than half of their rounds (they hold "
        f"{100 * late_data:.0f}% of the training data). The slowest client's round is {stragglers['round / median client'].iloc[0]:.2g} times the "
        f"median client's, and its upload is {stragglers['slowest client: upload'].iloc[0]:.2g} s of "
        f"{stragglers['round (s)'].iloc[0]:.3g} s."]
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
dl = deadline_table
text.append(f"**Deadline.** At {label[ref_bits]} with seed {seed0}, a {d:g} s deadline dropped "
            f"{int(dl['dropped client-rounds'].max())} client-rounds; final accuracy "
            + " against ".join(f"{dl.loc[i, 'final test_acc']:.4f} ({i})" for i in dl.index)
            + ", in " + " against ".join(f"{dl.loc[i, f'simulated {unit}']:.3g}" for i in dl.index)
            + f" simulated {unit}.")
at = async_table
text.append(f"**FedBuff.** With buffer_size {buffer_size or base.clients_per_round}, FedBuff made "
            f"{int(at.loc['FedBuff', 'updates'])} server updates in {at.loc['FedBuff', f'simulated {unit}']:.3g} "
            f"{unit} (mean staleness {at.loc['FedBuff', 'mean staleness']:.2f}); by {common_end:.3g} {unit} its best "
            f"accuracy was {at.iloc[:, 4]['FedBuff']:.4f} against FedAvg's {at.iloc[:, 4]['FedAvg']:.4f}.")
wt = what_if_table
text.append(f"**On `{what_if_link}` links** (replayed, same runs): "
            + "; ".join(f"{lab} {wt.iloc[:, 1][lab]:.3g} {w_unit} for {num_rounds} rounds, "
                        f"{fmt(wt.iloc[:, 2][lab], float('nan'))} {w_unit} to {target:g}" for lab in wt.index) + ".")
display(Markdown("### In short\n\n" + "\n\n".join(text)))
