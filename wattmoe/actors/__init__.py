"""Ray expert actors: `ExpertHost`, the dispatcher, deployment of a `Placement`, TTHA feedback.

Not implemented yet: `ExpertHost` will be a plain class wrapped by the caller with
`ray.remote(...).options(...)`, measured by `wattmoe.telemetry`.
"""
