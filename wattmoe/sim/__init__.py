"""SimPy engine: device and link resources, workload arrivals, power and thermal models.

Not implemented yet: this package will advance a SimPy clock with costs from
`wattmoe.cost_model` for the same `Placement`, workload and router code that the Ray actors run.
"""
