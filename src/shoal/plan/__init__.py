"""The plan: the document `shoal plan` writes and the runtime serves.

`shoal.plan.document`  plan.json as typed records (`PlanDocument`)
`shoal.plan.directory` the plan directory: write, read, verify, build its models (`load_plan`)
`shoal.plan.latency`   the latency model T (CoFormer eq. 3-6) shared by planner, benchmarks, tests

Both the planner and the runtime import this package; it imports neither.
"""
