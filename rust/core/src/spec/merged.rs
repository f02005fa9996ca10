//! The merged drafter's draft tree of one step: suffix continuations and recycled candidates
//! grown best-first by the DySpec builder ([`dyntree`](super::dyntree)), one frontier (one
//! depth) per round.
//!
//! The rule is the one of `tokenloom.spec.suffix.drafter.MergedDrafter` (its pure-Python form
//! is the parity reference of the tests):
//!
//! 1. the *suffix trie* is the trie union of this step's continuation drafts
//!    ([`SuffixDraft`], one per source: 0 this request, 1 the cross-request cache); every edge
//!    keeps the calibration class of each source offering it ([`ClassMap::suffix_class`], with
//!    the effective match length `match_len + depth - 1`);
//! 2. the recycled row of a frontier node lists the recycler's `k` candidates after its token,
//!    each with the estimate of its (rank, depth) class ([`ClassMap::recycle_class`]); a token's
//!    later ranks and a row never written (all zero) get 0; the row is capped ([`cap_rows`]);
//! 3. a frontier node whose suffix-trie node has children gets a *merged* row: the suffix
//!    children (in the trie's insertion order) with the classes of their sources, then the
//!    recycled candidates (a token's first rank only; an all-zero row offers nothing), each
//!    with `1 - prod(1 - est[class])` over its classes. When a frontier has merged rows, all
//!    its rows are laid in one matrix (zero-padded to the widest) and capped again;
//! 4. the builder expands the frontier with these rows;
//! 5. optionally, the tree is cut ([`Cut`]): to the root and its N best nodes for this
//!    machine's step cost ([`best_nodes`], `budget="auto"`) or to its best chain
//!    ([`top_path`], chain mode).
//!
//! Every float is computed in the order of the Python rule (f64; the row sums in numpy's
//! pairwise order, [`numpy_sum`]), so the trees are identical, not merely close.
//!
//! Besides the tree, every row handed to the builder is returned with what it offered: per
//! row, the (token, class) pairs of its candidates (a candidate of two sources lists both
//! classes), which the calibration learns from once verification revealed the next token.

use super::dyntree::{DynamicTree, DynamicTreeBuilder};
use super::recycling::TokenRecycler;
use super::suffix::SuffixDraft;
use crate::error::{CoreError, Result};

/// How candidates map to calibration classes (the constants of
/// `tokenloom.spec.suffix.calibration`).
///
/// Suffix classes: `((source * M + m) * P + p) * S + u` with `m` the bucket of the effective
/// match length (the first bound `>=` it), `p` the bucket of the count ratio (the first of the
/// first `P - 1` bounds above it, else `P - 1`) and `u` the bucket of the support (the first
/// bound `>=` it); a value above every bound falls in the last bucket. Recycled classes follow:
/// `n_suffix + rank * recycle_depths + min(depth, recycle_depths - 1)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    match_bounds: Vec<i64>,
    prob_bounds: Vec<f64>,
    support_bounds: Vec<i64>,
    sources: usize,
    recycle_depths: usize,
}

/// Checks that `xs` holds at least `min_len` strictly increasing values (a NaN fails);
/// `noun` names them in the error ("bucket bounds", "counts").
fn check_increasing<T: PartialOrd + Copy + std::fmt::Debug>(
    what: &str,
    xs: &[T],
    min_len: usize,
    noun: &str,
) -> Result<()> {
    if xs.len() < min_len {
        return Err(CoreError::value(format!(
            "{what}: expected at least {min_len} {noun}, got {}",
            xs.len()
        )));
    }
    if xs.windows(2).any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less)) {
        return Err(CoreError::value(format!(
            "{what}: expected strictly increasing {noun}, got {xs:?}"
        )));
    }
    Ok(())
}

impl ClassMap {
    /// Checks the bounds (strictly increasing, non-empty; at least 2 count-ratio bounds, all
    /// finite) and the counts (`sources >= 1`, `recycle_depths >= 1`).
    pub fn new(
        match_bounds: Vec<i64>,
        prob_bounds: Vec<f64>,
        support_bounds: Vec<i64>,
        sources: usize,
        recycle_depths: usize,
    ) -> Result<Self> {
        check_increasing("match_buckets", &match_bounds, 1, "bucket bounds")?;
        check_increasing("prob_buckets", &prob_bounds, 2, "bucket bounds")?;
        if prob_bounds.iter().any(|p| !p.is_finite()) {
            return Err(CoreError::value(format!(
                "prob_buckets: expected finite bounds, got {prob_bounds:?}"
            )));
        }
        check_increasing("support_buckets", &support_bounds, 1, "bucket bounds")?;
        if sources == 0 || recycle_depths == 0 {
            return Err(CoreError::value(format!(
                "sources and recycle_depths: expected at least 1 each, got {sources} and {recycle_depths}"
            )));
        }
        Ok(ClassMap {
            match_bounds,
            prob_bounds,
            support_bounds,
            sources,
            recycle_depths,
        })
    }

    /// Suffix sources told apart.
    pub fn sources(&self) -> usize {
        self.sources
    }

    /// Recycling depths told apart (deeper nodes pool into the last).
    pub fn recycle_depths(&self) -> usize {
        self.recycle_depths
    }

    /// Number of suffix classes (the recycled ones follow).
    pub fn n_suffix(&self) -> usize {
        self.sources * self.match_bounds.len() * self.prob_bounds.len() * self.support_bounds.len()
    }

    /// Number of classes with `k` recycled candidates per row.
    pub fn num_classes(&self, k: usize) -> usize {
        self.n_suffix() + k * self.recycle_depths
    }

    /// The class of a suffix candidate of `source` (< `sources`, unchecked).
    pub fn suffix_class(&self, source: usize, match_len: i64, prob: f64, support: i64) -> usize {
        let le = |x: i64, b: &[i64]| b.iter().position(|&v| x <= v).unwrap_or(b.len() - 1);
        let last = self.prob_bounds.len() - 1;
        let p = self.prob_bounds[..last]
            .iter()
            .position(|&b| prob < b)
            .unwrap_or(last);
        let m = le(match_len, &self.match_bounds);
        let u = le(support, &self.support_bounds);
        ((source * self.match_bounds.len() + m) * self.prob_bounds.len() + p)
            * self.support_bounds.len()
            + u
    }

    /// The class of the rank-`rank` recycled candidate of a node at `depth` (root 0).
    pub fn recycle_class(&self, rank: usize, depth: usize) -> usize {
        self.n_suffix() + rank * self.recycle_depths + depth.min(self.recycle_depths - 1)
    }
}

/// The sum of `x` in numpy's order (`np.sum` of a contiguous row: a plain loop below 8
/// elements, 8 interleaved partial sums up to 128, halves above), so that [`cap_rows`] is
/// bit-identical to its numpy form (the tests' reference).
pub fn numpy_sum(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 8 {
        let mut s = 0.0;
        for &v in x {
            s += v;
        }
        s
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&x[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += x[i + j];
            }
            i += 8;
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &x[i..] {
            s += v;
        }
        s
    } else {
        let half = n / 2;
        let half = half - half % 8;
        numpy_sum(&x[..half]) + numpy_sum(&x[half..])
    }
}

/// Makes every row of `probs` (row-major, `width` columns) a sub-distribution while keeping
/// its most confident estimates (the rule of `tokenloom.spec.suffix.drafter.cap_rows`): a row
/// summing above 1 keeps its largest estimate (`n` entries tied at it keep `min(max, 1 / n)`
/// each) and the others share what is left in their proportions (scaled down only when they
/// sum above it); other rows are unchanged. Entries are expected finite and in [0, 1].
pub fn cap_rows(probs: &mut [f64], width: usize) {
    if width == 0 {
        return;
    }
    for row in probs.chunks_mut(width) {
        let total = numpy_sum(row);
        if total.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let best = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let n = row.iter().filter(|&&x| x == best).count() as f64;
        let keep = best.min(1.0 / n);
        let rest = total - n * best;
        let room = 1.0 - n * keep;
        let factor = if rest > room {
            room / rest.max(1e-300)
        } else {
            1.0
        };
        for x in row.iter_mut() {
            *x = if *x == best { keep } else { *x * factor };
        }
    }
}

/// One step's input besides the builder.
#[derive(Debug, Clone, Copy)]
pub struct MergedInput<'a> {
    /// The root token (the newest token of the sequence).
    pub root: i64,
    /// This step's continuation drafts with their source (< `classes.sources()`); a draft
    /// with `match_len == 0` offers nothing.
    pub drafts: &'a [(usize, SuffixDraft)],
    /// The recycler whose rows give recycled candidates (None: suffix candidates only).
    pub recycler: Option<&'a TokenRecycler>,
    /// The estimate of every class, in [0, 1]: `classes.num_classes(k)` entries (`k` the
    /// recycler's, 0 without one).
    pub est: &'a [f64],
    pub classes: &'a ClassMap,
    /// How the grown tree is cut.
    pub cut: Cut<'a>,
}

/// How [`grow_merged`] cuts the grown tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cut<'a> {
    /// The builder's whole tree.
    Whole,
    /// The root and its best nodes for the step-cost curve (token counts, seconds):
    /// [`best_nodes`] (`budget="auto"`).
    Best(&'a [f64], &'a [f64]),
    /// The best chain for a token cost: [`top_path`] (chain mode).
    Chain(f64),
}

/// A grown tree and the candidates each of its rows offered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergedTree {
    /// The builder's tree; `draft_rows[i]` indexes the rows below (-1: never expanded).
    pub tree: DynamicTree,
    /// The builder id of the node of each row handed to the builder. [R]
    pub row_nodes: Vec<i64>,
    /// Row `r` offered the pairs `row_offsets[r]..row_offsets[r + 1]`. [R + 1]
    pub row_offsets: Vec<i64>,
    /// Token of each offered (token, class) pair; a token's pairs are adjacent. [C]
    pub offered_tokens: Vec<i64>,
    /// Class of each pair. [C]
    pub offered_classes: Vec<i64>,
    /// Whether each source (by index) matched this step.
    pub matched: Vec<bool>,
}

/// The suffix trie of a step: per node, its children in insertion order as (token, child,
/// classes of the sources offering that edge).
type Trie = Vec<Vec<(i64, usize, Vec<usize>)>>;

fn suffix_trie(input: &MergedInput<'_>, matched: &mut [bool]) -> Trie {
    let mut trie: Trie = vec![Vec::new()];
    for (src, d) in input.drafts {
        if d.match_len == 0 {
            continue;
        }
        matched[*src] = true;
        let mut local: Vec<usize> = Vec::with_capacity(d.tokens.len());
        let mut depth: Vec<i64> = Vec::with_capacity(d.tokens.len());
        for i in 0..d.tokens.len() {
            let (t, p) = (d.tokens[i], d.parents[i]);
            let (mp, dd) = if p < 0 {
                (0, 1)
            } else {
                (local[p as usize], depth[p as usize] + 1)
            };
            let class = input.classes.suffix_class(
                *src,
                d.match_len as i64 + dd - 1,
                d.probs[i],
                d.support[i],
            );
            let child = match trie[mp].iter().position(|e| e.0 == t) {
                Some(j) => {
                    trie[mp][j].2.push(class);
                    trie[mp][j].1
                }
                None => {
                    let c = trie.len();
                    trie.push(Vec::new());
                    trie[mp].push((t, c, vec![class]));
                    c
                }
            };
            local.push(child);
            depth.push(dd);
        }
    }
    trie
}

/// A frontier row offering suffix candidates: tokens, merged estimates, classes per token.
type MergedRow = (Vec<i64>, Vec<f64>, Vec<Vec<usize>>);

/// Grows this step's tree with `builder` (reset to `input.root`; its budget, depth and
/// children per node are the builder's), cuts it as `input.cut` says,
/// and returns it with the offered candidates (of every row, kept nodes or not).
///
/// Errors: a source not below `classes.sources()`, `est` of the wrong length or with an entry
/// outside [0, 1], a bad cost curve ([`check_cost`]), a draft whose arrays differ in length or whose parents are not earlier
/// nodes, a bad root token (the builder's check).
pub fn grow_merged(
    builder: &mut DynamicTreeBuilder,
    input: &MergedInput<'_>,
) -> Result<MergedTree> {
    let cm = input.classes;
    let k = input.recycler.map_or(0, |r| r.k());
    if input.est.len() != cm.num_classes(k) {
        return Err(CoreError::shape(
            "est",
            format!(
                "{} estimates ({} suffix classes + k = {k} ranks x {} depths)",
                cm.num_classes(k),
                cm.n_suffix(),
                cm.recycle_depths()
            ),
            input.est.len(),
        ));
    }
    if let Some(i) = input.est.iter().position(|e| !(0.0..=1.0).contains(e)) {
        return Err(CoreError::value(format!(
            "est[{i}] = {}: expected an estimate in [0, 1]",
            input.est[i]
        )));
    }
    for (src, d) in input.drafts {
        if *src >= cm.sources() {
            return Err(CoreError::value(format!(
                "source {src}: expected one of 0..{}",
                cm.sources()
            )));
        }
        let n = d.tokens.len();
        if d.parents.len() != n || d.probs.len() != n || d.support.len() != n {
            return Err(CoreError::shape(
                "suffix draft",
                format!("{n} parents, probs and support"),
                format!(
                    "{}, {}, {}",
                    d.parents.len(),
                    d.probs.len(),
                    d.support.len()
                ),
            ));
        }
        if d.parents.iter().enumerate().any(|(i, &p)| p >= i as i64) {
            return Err(CoreError::value(
                "suffix draft: every parent must be an earlier node or -1",
            ));
        }
    }
    match input.cut {
        Cut::Best(tokens, seconds) => check_cost(tokens, seconds)?,
        Cut::Chain(c) if !(0.0..=1.0).contains(&c) => {
            return Err(CoreError::value(format!(
                "token_cost: expected a number in [0, 1], got {c}"
            )))
        }
        _ => {}
    }
    let est = input.est;
    let mut out = MergedTree {
        matched: vec![false; cm.sources()],
        row_offsets: vec![0],
        ..Default::default()
    };
    let trie = suffix_trie(input, &mut out.matched);
    builder.reset(input.root)?;
    // The suffix-trie node of each builder node (-1: none), filled as nodes reach the frontier.
    let mut sid: Vec<i64> = vec![0];
    let mut ids: Vec<i64> = Vec::new();
    let (mut toks, mut pars, mut deps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tid, mut classes, mut tp) =
        (Vec::<i64>::new(), Vec::<usize>::new(), Vec::<f64>::new());
    let mut merged: Vec<Option<MergedRow>> = Vec::new();
    while !builder.is_done() {
        ids.clear();
        toks.clear();
        pars.clear();
        deps.clear();
        for &id in builder.frontier()? {
            let (t, p, d) = builder.node(id as i64)?;
            ids.push(id as i64);
            toks.push(t);
            pars.push(p);
            deps.push(d as usize);
        }
        let f = ids.len();
        if sid.len() < builder.num_nodes() {
            sid.resize(builder.num_nodes(), -1);
        }
        // (2) the recycled rows, capped.
        if let Some(rec) = input.recycler {
            tid.clear();
            tid.extend(rec.rows(&toks)?.into_iter().map(i64::from));
            classes.clear();
            tp.clear();
            for r in 0..f {
                let row = &tid[r * k..(r + 1) * k];
                let written = row.iter().any(|&t| t != 0);
                for j in 0..k {
                    let c = cm.recycle_class(j, deps[r]);
                    classes.push(c);
                    let dup = row[..j].contains(&row[j]);
                    tp.push(if written && !dup { est[c] } else { 0.0 });
                }
            }
            cap_rows(&mut tp, k);
        }
        // (3) the suffix rows, merged with the recycled candidates.
        merged.clear();
        let mut row_nodes = Vec::with_capacity(f);
        for r in 0..f {
            let bid = ids[r] as usize;
            let s = if bid == 0 {
                0
            } else {
                let ps = sid[pars[r] as usize];
                if ps < 0 {
                    -1
                } else {
                    trie[ps as usize]
                        .iter()
                        .find(|e| e.0 == toks[r])
                        .map_or(-1, |e| e.1 as i64)
                }
            };
            sid[bid] = s;
            row_nodes.push(bid as i64);
            if s >= 0 && !trie[s as usize].is_empty() {
                merged.push(Some(merge_row(
                    &trie[s as usize],
                    input
                        .recycler
                        .map(|_| (&tid[r * k..(r + 1) * k], &classes[r * k..(r + 1) * k])),
                    est,
                )));
            } else {
                merged.push(None);
            }
        }
        // The offered candidates of every row, in frontier order (row r = rows_seen + r).
        for r in 0..f {
            match &merged[r] {
                Some((tl, _, cl)) => {
                    for (t, cs) in tl.iter().zip(cl) {
                        for &c in cs {
                            out.offered_tokens.push(*t);
                            out.offered_classes.push(c as i64);
                        }
                    }
                }
                None if k > 0 => {
                    for j in 0..k {
                        if tp[r * k + j] > 0.0 {
                            out.offered_tokens.push(tid[r * k + j]);
                            out.offered_classes.push(classes[r * k + j] as i64);
                        }
                    }
                }
                None => {}
            }
            out.row_offsets.push(out.offered_tokens.len() as i64);
        }
        out.row_nodes.extend_from_slice(&row_nodes);
        // (4) the frontier's rows: merged rows laid over the recycled ones and capped again.
        if merged.iter().any(Option::is_some) {
            let width = merged
                .iter()
                .flatten()
                .map(|m| m.0.len())
                .chain(std::iter::once(k))
                .max()
                .unwrap_or(k);
            let mut new_ids = vec![0i64; f * width];
            let mut new_p = vec![0.0f64; f * width];
            for r in 0..f {
                let (ri, rp) = (
                    &mut new_ids[r * width..(r + 1) * width],
                    &mut new_p[r * width..(r + 1) * width],
                );
                match &merged[r] {
                    Some((tl, pl, _)) => {
                        ri[..tl.len()].copy_from_slice(tl);
                        rp[..pl.len()].copy_from_slice(pl);
                    }
                    None if k > 0 => {
                        ri[..k].copy_from_slice(&tid[r * k..(r + 1) * k]);
                        rp[..k].copy_from_slice(&tp[r * k..(r + 1) * k]);
                    }
                    None => {}
                }
            }
            cap_rows(&mut new_p, width);
            builder.expand_topk(&ids, &new_ids, &new_p, width)?;
        } else if k > 0 {
            builder.expand_topk(&ids, &tid, &tp, k)?;
        } else {
            builder.expand_topk(&ids, &vec![0; f], &vec![0.0; f], 1)?;
        }
    }
    out.tree = builder.tree()?;
    if out.tree.tokens.len() > 1 {
        let t = &out.tree;
        let keep = match input.cut {
            Cut::Whole => None,
            Cut::Best(tokens, seconds) => Some(best_nodes(&t.scores, &t.depths, tokens, seconds)),
            Cut::Chain(token_cost) => Some(top_path(&t.scores, &t.parents, token_cost)),
        };
        if let Some(keep) = keep {
            out.tree = subtree(&out.tree, &keep);
        }
    }
    Ok(out)
}

/// One merged row: the suffix children of a trie node, then the recycled candidates
/// `(tokens, classes)` of the node's row (a token's first rank only; nothing from an all-zero
/// row), each with `1 - prod(1 - est[class])` over its classes.
fn merge_row(
    suffix: &[(i64, usize, Vec<usize>)],
    recycled: Option<(&[i64], &[usize])>,
    est: &[f64],
) -> (Vec<i64>, Vec<f64>, Vec<Vec<usize>>) {
    let mut tl: Vec<i64> = suffix.iter().map(|e| e.0).collect();
    let mut cl: Vec<Vec<usize>> = suffix.iter().map(|e| e.2.clone()).collect();
    if let Some((row, cls)) = recycled {
        if row.iter().any(|&t| t != 0) {
            let first = cls[0]; // the row's recycled classes are >= it, suffix ones below
            for (&t, &c) in row.iter().zip(cls) {
                let j = match tl.iter().position(|&x| x == t) {
                    Some(j) => j,
                    None => {
                        tl.push(t);
                        cl.push(Vec::new());
                        tl.len() - 1
                    }
                };
                if cl[j].last().is_none_or(|&l| l < first) {
                    cl[j].push(c);
                }
            }
        }
    }
    let pl = cl
        .iter()
        .map(|cs| {
            let mut miss = 1.0f64;
            for &c in cs {
                miss *= 1.0 - est[c];
            }
            1.0 - miss
        })
        .collect();
    (tl, pl, cl)
}

/// `np.interp(x, xp, fp)` for one point, in numpy's arithmetic: `fp[0]` left of `xp[0]`,
/// `fp[-1]` from `xp[-1]` on, `fp[j]` at a knot, else `slope * (x - xp[j]) + fp[j]`.
/// `xp` strictly increasing, as long as `fp`, not empty (unchecked).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x < xp[0] {
        return fp[0];
    }
    if x >= xp[last] {
        return fp[last];
    }
    let j = xp.partition_point(|&v| v <= x) - 1; // xp[j] <= x < xp[j + 1]
    if xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// Checks a step-cost curve: as many seconds as token counts (at least one), the counts
/// strictly increasing and finite, the seconds finite and positive.
pub fn check_cost(tokens: &[f64], seconds: &[f64]) -> Result<()> {
    if tokens.is_empty() || tokens.len() != seconds.len() {
        return Err(CoreError::shape(
            "cost",
            "as many seconds as token counts (at least one)",
            format!("{} token counts, {} seconds", tokens.len(), seconds.len()),
        ));
    }
    if tokens.iter().any(|t| !t.is_finite()) {
        return Err(CoreError::value(format!(
            "cost tokens: expected finite counts, got {tokens:?}"
        )));
    }
    check_increasing("cost tokens", tokens, 1, "counts")?;
    if seconds.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(CoreError::value(format!(
            "cost seconds: expected finite times > 0, got {seconds:?}"
        )));
    }
    Ok(())
}

/// The nodes to keep of a scored tree (node 0 the root, BFS order, a child never scored above
/// its parent): the root and the N best draft nodes (by score, ties to the shallower, then the
/// lower index), N maximising `(1 + sum of their scores) / cost(N + 1)` (the first maximum),
/// `cost` the curve `tokens` -> `seconds` ([`interp`]). The rule and float order of
/// `tokenloom.spec.suffix.drafter.best_nodes`. Increasing node indices.
pub fn best_nodes(scores: &[f64], depths: &[i64], tokens: &[f64], seconds: &[f64]) -> Vec<usize> {
    let t = scores.len();
    let mut order: Vec<usize> = (1..t).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(depths[a].cmp(&depths[b]))
            .then(a.cmp(&b))
    });
    let (mut best, mut n, mut cum) = (f64::NEG_INFINITY, 0, 0.0f64);
    for i in 0..t {
        if i > 0 {
            cum += scores[order[i - 1]];
        }
        let rate = (1.0 + cum) / interp((i + 1) as f64, tokens, seconds);
        if rate > best {
            best = rate;
            n = i;
        }
    }
    let mut keep: Vec<usize> = std::iter::once(0)
        .chain(order[..n].iter().copied())
        .collect();
    keep.sort_unstable();
    keep
}

/// The best chain of a scored tree (node 0 the root, parents before children): the
/// root-to-node path with the largest sum of `score - token_cost` over its draft nodes (ties:
/// the shallower, then the lower index), root first. The rule and float order of
/// `tokenloom.spec.suffix.drafter.top_path`.
pub fn top_path(scores: &[f64], parents: &[i64], token_cost: f64) -> Vec<usize> {
    let t = scores.len();
    let mut gain = vec![0.0f64; t];
    let mut depth = vec![0usize; t];
    let mut best = 0;
    for i in 1..t {
        let p = parents[i] as usize;
        gain[i] = gain[p] + scores[i] - token_cost;
        depth[i] = depth[p] + 1;
        if gain[i] > gain[best] || (gain[i] == gain[best] && depth[i] < depth[best]) {
            best = i;
        }
    }
    let mut path = vec![best];
    while path[path.len() - 1] != 0 {
        path.push(parents[path[path.len() - 1]] as usize);
    }
    path.reverse();
    path
}

/// The tree of the nodes `keep` (increasing, subtree-closed, root first) of `tree`, parents
/// remapped; every other field carried over.
pub fn subtree(tree: &DynamicTree, keep: &[usize]) -> DynamicTree {
    let mut pos = vec![-1i64; tree.tokens.len()];
    for (p, &i) in keep.iter().enumerate() {
        pos[i] = p as i64;
    }
    let pick_i = |v: &[i64]| keep.iter().map(|&i| v[i]).collect::<Vec<i64>>();
    DynamicTree {
        tokens: pick_i(&tree.tokens),
        parents: keep
            .iter()
            .map(|&i| {
                if tree.parents[i] < 0 {
                    -1
                } else {
                    pos[tree.parents[i] as usize]
                }
            })
            .collect(),
        depths: pick_i(&tree.depths),
        scores: keep.iter().map(|&i| tree.scores[i]).collect(),
        draft_rows: pick_i(&tree.draft_rows),
        node_ids: pick_i(&tree.node_ids),
    }
}

#[cfg(test)]
mod tests;
