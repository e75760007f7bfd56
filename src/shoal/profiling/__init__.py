"""Measuring a device, and the profile that records it.

`sampling`  which sub-model shapes to time (a stratified sample of a teacher family)
`timing`    the one timing loop (`measure_latency`) and its statistics (`LatencyStats`)
`machine`   what this machine is (CPU, cores, RAM, CUDA, library versions)
`dataset`   the append-only measurement file, resumable after a crash
`runner`    a measurement job: time items in this process or in a child under a CPU limit
`jobs`      run jobs, sequentially or on disjoint cores at once, with progress
`profile`   the profile directory `shoal profile` writes (measurements, predictors, call overhead)
`resolve`   a device's latency predictor for the planner: its profile, else a catalog estimate

Profiling sits below the runtime: the call-overhead measurement it records is passed in
(`shoal.runtime.overhead.measure_rpc`).
"""
