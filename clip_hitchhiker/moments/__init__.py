"""Moments: where in a video a query lies. `rule` turns query-scoring frame weights into a
(start, peak, end) in seconds, the one rule that search prints and the benchmark measures;
`evaluation` holds the baselines (sliding windows, best frame, priors) and the R@1 IoU metrics;
`run` is the moment-localisation evaluation behind `run_msr_retrieval.py --task moments`.
`rule` and `evaluation` are pure (numpy, torch); `run` may import `clip_hitchhiker.datasets`,
`clip_hitchhiker.models`, `clip_hitchhiker.video`, `query_scoring`, `data_loader` and the
infrastructure modules.
"""
