//! The Docker Engine API request bodies the policy reads, as dockerd's Go types declare them
//! (API 1.24 to 1.45, the union of their fields): container create, update and exec, network
//! connect and disconnect, volume create.
//!
//! Owns: field names (their JSON spelling) and types. Must not: hold rules.

use super::gojson::{F, S, T};
use T::*;

static RESTART: [F; 2] = [F("Name", Str), F("MaximumRetryCount", Int)];
static LOG: [F; 2] = [F("Type", Str), F("Config", StrMap)];
static WEIGHT_DEVICE: [F; 2] = [F("Path", Str), F("Weight", Int)];
static THROTTLE_DEVICE: [F; 2] = [F("Path", Str), F("Rate", Int)];
static DEVICE: [F; 3] = [
    F("PathOnHost", Str),
    F("PathInContainer", Str),
    F("CgroupPermissions", Str),
];
static DEVICE_REQUEST: [F; 5] = [
    F("Driver", Str),
    F("Count", Int),
    F("DeviceIDs", Strs),
    F("Capabilities", Opaque),
    F("Options", StrMap),
];
static ULIMIT: [F; 3] = [F("Name", Str), F("Hard", Int), F("Soft", Int)];
static PORT_BINDING: [F; 2] = [F("HostIp", Str), F("HostPort", Str)];
static BIND_OPTIONS: [F; 5] = [
    F("Propagation", Str),
    F("NonRecursive", Bool),
    F("CreateMountpoint", Bool),
    F("ReadOnlyNonRecursive", Bool),
    F("ReadOnlyForceRecursive", Bool),
];
static DRIVER: [F; 2] = [F("Name", Str), F("Options", StrMap)];
static VOLUME_OPTIONS: [F; 4] = [
    F("NoCopy", Bool),
    F("Labels", StrMap),
    F("DriverConfig", PObj(&S(&[&DRIVER]))),
    F("Subpath", Str),
];
static TMPFS_OPTIONS: [F; 3] = [F("SizeBytes", Int), F("Mode", Int), F("Options", Opaque)];
/// `mount.Mount`.
pub static MOUNT: [F; 9] = [
    F("Type", Str),
    F("Source", Str),
    F("Target", Str),
    F("ReadOnly", Bool),
    F("Consistency", Str),
    F("BindOptions", PObj(&S(&[&BIND_OPTIONS]))),
    F("VolumeOptions", PObj(&S(&[&VOLUME_OPTIONS]))),
    F("TmpfsOptions", PObj(&S(&[&TMPFS_OPTIONS]))),
    F("ClusterOptions", Opaque),
];

/// `container.Resources`, embedded in `HostConfig` and `UpdateConfig`.
pub static RESOURCES: [F; 31] = [
    F("CpuShares", Int),
    F("Memory", Int),
    F("NanoCpus", Int),
    F("CgroupParent", Str),
    F("BlkioWeight", Int),
    F("BlkioWeightDevice", List(&PObj(&S(&[&WEIGHT_DEVICE])))),
    F("BlkioDeviceReadBps", List(&PObj(&S(&[&THROTTLE_DEVICE])))),
    F("BlkioDeviceWriteBps", List(&PObj(&S(&[&THROTTLE_DEVICE])))),
    F("BlkioDeviceReadIOps", List(&PObj(&S(&[&THROTTLE_DEVICE])))),
    F("BlkioDeviceWriteIOps", List(&PObj(&S(&[&THROTTLE_DEVICE])))),
    F("CpuPeriod", Int),
    F("CpuQuota", Int),
    F("CpuRealtimePeriod", Int),
    F("CpuRealtimeRuntime", Int),
    F("CpusetCpus", Str),
    F("CpusetMems", Str),
    F("Devices", List(&Obj(&S(&[&DEVICE])))),
    F("DeviceCgroupRules", Strs),
    F("DeviceRequests", List(&Obj(&S(&[&DEVICE_REQUEST])))),
    F("KernelMemory", Int),
    F("KernelMemoryTCP", Int),
    F("MemoryReservation", Int),
    F("MemorySwap", Int),
    F("MemorySwappiness", PInt),
    F("OomKillDisable", PBool),
    F("PidsLimit", PInt),
    F("Ulimits", List(&PObj(&S(&[&ULIMIT])))),
    F("CpuCount", Int),
    F("CpuPercent", Int),
    F("IOMaximumIOps", Int),
    F("IOMaximumBandwidth", Int),
];

/// `container.HostConfig`'s own fields (it embeds [`RESOURCES`] too).
pub static HOST_OWN: [F; 40] = [
    F("Binds", Strs),
    F("ContainerIDFile", Str),
    F("LogConfig", Obj(&S(&[&LOG]))),
    F("NetworkMode", Str),
    F("PortBindings", Map(&List(&Obj(&S(&[&PORT_BINDING]))))),
    F("RestartPolicy", Obj(&S(&[&RESTART]))),
    F("AutoRemove", Bool),
    F("VolumeDriver", Str),
    F("VolumesFrom", Strs),
    F("ConsoleSize", Opaque),
    F("Annotations", StrMap),
    F("CapAdd", StrSlice),
    F("CapDrop", StrSlice),
    F("CgroupnsMode", Str),
    F("Dns", Strs),
    F("DnsOptions", Strs),
    F("DnsSearch", Strs),
    F("ExtraHosts", Strs),
    F("GroupAdd", Strs),
    F("IpcMode", Str),
    F("Cgroup", Str),
    F("Links", Strs),
    F("OomScoreAdj", Int),
    F("PidMode", Str),
    F("Privileged", Bool),
    F("PublishAllPorts", Bool),
    F("ReadonlyRootfs", Bool),
    F("SecurityOpt", Strs),
    F("StorageOpt", StrMap),
    F("Tmpfs", StrMap),
    F("UTSMode", Str),
    F("UsernsMode", Str),
    F("ShmSize", Int),
    F("Sysctls", StrMap),
    F("Runtime", Str),
    F("Isolation", Str),
    F("Mounts", List(&Obj(&S(&[&MOUNT])))),
    F("MaskedPaths", Strs),
    F("ReadonlyPaths", Strs),
    F("Init", PBool),
];

/// `container.HostConfig`.
pub static HOST: S = S(&[&HOST_OWN, &RESOURCES]);

static HEALTH: [F; 6] = [
    F("Test", Strs),
    F("Interval", Int),
    F("Timeout", Int),
    F("StartPeriod", Int),
    F("StartInterval", Int),
    F("Retries", Int),
];

/// `container.Config`.
pub static CONFIG: [F; 25] = [
    F("Hostname", Str),
    F("Domainname", Str),
    F("User", Str),
    F("AttachStdin", Bool),
    F("AttachStdout", Bool),
    F("AttachStderr", Bool),
    F("ExposedPorts", Set),
    F("Tty", Bool),
    F("OpenStdin", Bool),
    F("StdinOnce", Bool),
    F("Env", Strs),
    F("Cmd", StrSlice),
    F("Healthcheck", PObj(&S(&[&HEALTH]))),
    F("ArgsEscaped", Bool),
    F("Image", Str),
    F("Volumes", Set),
    F("WorkingDir", Str),
    F("Entrypoint", StrSlice),
    F("NetworkDisabled", Bool),
    F("MacAddress", Str),
    F("OnBuild", Strs),
    F("Labels", StrMap),
    F("StopSignal", Str),
    F("StopTimeout", PInt),
    F("Shell", StrSlice),
];

static IPAM: [F; 3] = [
    F("IPv4Address", Str),
    F("IPv6Address", Str),
    F("LinkLocalIPs", Strs),
];

/// `network.EndpointSettings`.
pub static ENDPOINT: [F; 15] = [
    F("IPAMConfig", PObj(&S(&[&IPAM]))),
    F("Links", Strs),
    F("Aliases", Strs),
    F("MacAddress", Str),
    F("DriverOpts", StrMap),
    F("GwPriority", Int),
    F("NetworkID", Str),
    F("EndpointID", Str),
    F("Gateway", Str),
    F("IPAddress", Str),
    F("IPPrefixLen", Int),
    F("IPv6Gateway", Str),
    F("GlobalIPv6Address", Str),
    F("GlobalIPv6PrefixLen", Int),
    F("DNSNames", Strs),
];

static NETWORKING: [F; 1] = [F("EndpointsConfig", Map(&PObj(&S(&[&ENDPOINT]))))];

/// The create wrapper's own fields: the inner `HostConfig`, the deprecated `Cpuset`, and
/// `NetworkingConfig`.
pub static WRAPPER: [F; 3] = [
    F("HostConfig", PObj(&HOST)),
    F("Cpuset", Str),
    F("NetworkingConfig", PObj(&S(&[&NETWORKING]))),
];

/// `POST /containers/create` as dockerd 20.10 to 24 decode it: the wrapper embeds `Config`
/// and (deprecated) `HostConfig`, so host settings may also sit at the top level.
pub static CREATE: S = S(&[&CONFIG, &WRAPPER, &HOST_OWN, &RESOURCES]);

/// `POST /containers/{id}/update`.
pub static UPDATE: S = S(&[&RESOURCES, &[F("RestartPolicy", Obj(&S(&[&RESTART])))]]);

/// `POST /containers/{id}/exec`.
pub static EXEC: S = S(&[&[
    F("User", Str),
    F("Privileged", Bool),
    F("Tty", Bool),
    F("ConsoleSize", Opaque),
    F("AttachStdin", Bool),
    F("AttachStderr", Bool),
    F("AttachStdout", Bool),
    F("Detach", Bool),
    F("DetachKeys", Str),
    F("Env", Strs),
    F("WorkingDir", Str),
    F("Cmd", Strs),
]]);

/// `POST /networks/{id}/connect` and `/disconnect`.
pub static CONNECT: S = S(&[&[
    F("Container", Str),
    F("EndpointConfig", PObj(&S(&[&ENDPOINT]))),
    F("Force", Bool),
]]);

/// `POST /volumes/create`.
pub static VOLUME: S = S(&[&[
    F("Name", Str),
    F("Driver", Str),
    F("DriverOpts", StrMap),
    F("Labels", StrMap),
]]);
