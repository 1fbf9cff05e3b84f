# The agent policy of a pod that brings none on a handler without a TEE
# (tee = "none"): every request is allowed, as before agent policies
# existed. A confidential guest never uses it: it refuses a pod whose
# initdata has no policy.
package agent_policy

import rego.v1

default CheckRequest := true

default VersionRequest := true

default GuestStatsRequest := true

default CreateSandboxRequest := true

default DestroySandboxRequest := true

default PullImageRequest := true

default CreateContainerRequest := true

default StartContainerRequest := true

default RemoveContainerRequest := true

default UpdateContainerRequest := true

default StatsContainerRequest := true

default ListProcessesRequest := true

default ExecProcessRequest := true

default SignalProcessRequest := true

default WaitProcessRequest := true

default ProcessIORequest := true

default CloseStdinRequest := true

default ResizePtyRequest := true

default OOMEventsRequest := true
