use super::*;
use crate::error::ErrorKind;
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "family": "web",
        "containerDefinitions": [
            {"name": "app", "image": "nginx:1.25", "memory": 256,
             "portMappings": [{"containerPort": 80}]},
            {"name": "side", "image": "busybox", "memory": 64, "essential": false}
        ]
    })
}

fn register(v: Value) -> Result<TaskDefinitionSpec, ApiError> {
    let req: RegisterTaskDefinitionRequest = serde_json::from_value(v).expect("request parses");
    validate_register(req)
}

fn app(v: &mut Value) -> &mut Value {
    &mut v["containerDefinitions"][0]
}
fn side(v: &mut Value) -> &mut Value {
    &mut v["containerDefinitions"][1]
}

use ErrorKind::{ClientException as C, InvalidParameterException as I};

type Mutation = fn(&mut Value);

/// (label, mutation, expected kind, substrings the message must contain)
fn rows() -> Vec<(&'static str, Mutation, ErrorKind, &'static [&'static str])> {
    vec![
        // --- task level
        (
            "family pattern",
            |v| v["family"] = json!("bad family"),
            C,
            &["bad family"],
        ),
        ("family empty", |v| v["family"] = json!(""), C, &["Family"]),
        (
            "family too long",
            |v| v["family"] = json!("f".repeat(256)),
            C,
            &["ffff"],
        ),
        (
            "networkMode enum",
            |v| v["networkMode"] = json!("foo"),
            I,
            &["foo", "networkMode"],
        ),
        (
            "pidMode enum",
            |v| v["pidMode"] = json!("container"),
            I,
            &["container", "pidMode"],
        ),
        (
            "ipcMode enum",
            |v| v["ipcMode"] = json!("shareable"),
            I,
            &["shareable"],
        ),
        (
            "compatibility enum",
            |v| v["requiresCompatibilities"] = json!(["LAMBDA"]),
            I,
            &["LAMBDA"],
        ),
        (
            "cpuArchitecture enum",
            |v| v["runtimePlatform"] = json!({"cpuArchitecture": "MIPS"}),
            I,
            &["MIPS"],
        ),
        (
            "osFamily enum",
            |v| v["runtimePlatform"] = json!({"operatingSystemFamily": "BEOS"}),
            I,
            &["BEOS"],
        ),
        (
            "task cpu garbage",
            |v| v["cpu"] = json!("lots"),
            C,
            &["lots"],
        ),
        (
            "task cpu too small",
            |v| v["cpu"] = json!("64"),
            C,
            &["'64'"],
        ),
        (
            "task cpu too big",
            |v| v["cpu"] = json!("200 vCPU"),
            C,
            &["200 vCPU"],
        ),
        (
            "task memory garbage",
            |v| v["memory"] = json!("big"),
            C,
            &["big"],
        ),
        (
            "tag reserved prefix",
            |v| v["tags"] = json!([{"key": "aws:owner", "value": "x"}]),
            I,
            &["aws:owner"],
        ),
        (
            "tag bad chars",
            |v| v["tags"] = json!([{"key": "k", "value": "a|b"}]),
            I,
            &["a|b"],
        ),
        (
            "tag duplicate",
            |v| v["tags"] = json!([{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]),
            I,
            &["'k'"],
        ),
        (
            "too many tags",
            |v| {
                v["tags"] = Value::Array(
                    (0..51)
                        .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
                        .collect(),
                )
            },
            I,
            &["51"],
        ),
        (
            "no containers",
            |v| v["containerDefinitions"] = json!([]),
            I,
            &["containerDefinitions: 0"],
        ),
        (
            "11 containers",
            |v| {
                v["containerDefinitions"] = Value::Array(
                    (0..11)
                        .map(|i| json!({"name": format!("c{i}"), "image": "x", "memory": 32}))
                        .collect(),
                )
            },
            I,
            &["11"],
        ),
        (
            "request too large",
            |v| app(v)["dockerLabels"] = json!({"big": "x".repeat(70_000)}),
            C,
            &["65536"],
        ),
        // --- names and images
        (
            "container name missing",
            |v| {
                app(v).as_object_mut().unwrap().remove("name");
            },
            C,
            &[
                "Container.name should not be null or empty",
                "containerDefinitions[0]",
            ],
        ),
        (
            "container name pattern",
            |v| app(v)["name"] = json!("my app"),
            I,
            &["my app"],
        ),
        (
            "duplicate container names",
            |v| side(v)["name"] = json!("app"),
            C,
            &["Duplicate container names are not allowed.", "'app'"],
        ),
        (
            "image missing",
            |v| {
                app(v).as_object_mut().unwrap().remove("image");
            },
            C,
            &["Container.image should not be null or empty.", "'app'"],
        ),
        (
            "image empty",
            |v| side(v)["image"] = json!(" "),
            C,
            &["Container.image should not be null or empty.", "'side'"],
        ),
        (
            "image too long",
            |v| app(v)["image"] = json!("i".repeat(256)),
            I,
            &["iiii", "'app'", "255"],
        ),
        (
            "image whitespace",
            |v| app(v)["image"] = json!("nginx latest"),
            I,
            &["nginx latest", "'app'"],
        ),
        (
            "versionConsistency enum",
            |v| app(v)["versionConsistency"] = json!("maybe"),
            I,
            &["maybe", "'app'"],
        ),
        // --- cpu and memory
        (
            "container cpu negative",
            |v| app(v)["cpu"] = json!(-1),
            I,
            &["-1", "'app'"],
        ),
        (
            "container memory negative",
            |v| app(v)["memory"] = json!(-5),
            C,
            &["Invalid 'memory' setting for container 'app'", "-5"],
        ),
        (
            "container memory below 6",
            |v| app(v)["memory"] = json!(4),
            C,
            &["container 'app': 4", "6 MiB"],
        ),
        (
            "memoryReservation below 6",
            |v| app(v)["memoryReservation"] = json!(0),
            C,
            &["memoryReservation", "'app': 0"],
        ),
        (
            "no memory anywhere",
            |v| {
                side(v).as_object_mut().unwrap().remove("memory");
            },
            C,
            &[
                "Invalid 'memory' setting for container 'side'",
                "memoryReservation",
            ],
        ),
        (
            "memory below reservation",
            |v| app(v)["memoryReservation"] = json!(512),
            C,
            &["'app'", "256", "512"],
        ),
        (
            "memory equals reservation",
            |v| app(v)["memoryReservation"] = json!(256),
            C,
            &["'app'", "256"],
        ),
        (
            "container memory above task",
            |v| {
                v["memory"] = json!("128");
            },
            C,
            &["'app'", "256", "128"],
        ),
        (
            "reservations above task",
            |v| {
                v["memory"] = json!("300");
                app(v)["memoryReservation"] = json!(250);
            },
            C,
            &["314", "300"],
        ),
        (
            "cpu sum above task",
            |v| {
                v["cpu"] = json!("256");
                app(v)["cpu"] = json!(200);
                side(v)["cpu"] = json!(100);
            },
            C,
            &["300", "256"],
        ),
        // --- ports
        (
            "none with ports",
            |v| v["networkMode"] = json!("none"),
            C,
            &["networkMode=none", "'app'", "80"],
        ),
        (
            "host hostPort mismatch",
            |v| {
                v["networkMode"] = json!("host");
                app(v)["portMappings"][0]["hostPort"] = json!(8080);
            },
            C,
            &["host ports and container ports", "8080", "'app'"],
        ),
        (
            "awsvpc hostPort mismatch",
            |v| {
                v["networkMode"] = json!("awsvpc");
                app(v)["portMappings"][0]["hostPort"] = json!(8080);
            },
            C,
            &["networkMode=awsvpc", "8080", "'app'"],
        ),
        (
            "awsvpc hostPort zero",
            |v| {
                v["networkMode"] = json!("awsvpc");
                app(v)["portMappings"][0]["hostPort"] = json!(0);
            },
            C,
            &["hostPort 0", "'app'"],
        ),
        (
            "containerPort zero",
            |v| app(v)["portMappings"][0]["containerPort"] = json!(0),
            I,
            &["containerPort 0", "'app'"],
        ),
        (
            "containerPort too big",
            |v| app(v)["portMappings"][0]["containerPort"] = json!(70000),
            I,
            &["70000", "'app'"],
        ),
        (
            "containerPort missing",
            |v| app(v)["portMappings"] = json!([{"hostPort": 8080}]),
            I,
            &["containerPort is required", "'app'"],
        ),
        (
            "hostPort negative",
            |v| app(v)["portMappings"][0]["hostPort"] = json!(-1),
            I,
            &["hostPort -1", "'app'"],
        ),
        (
            "hostPort too big",
            |v| app(v)["portMappings"][0]["hostPort"] = json!(65536),
            I,
            &["65536", "'app'"],
        ),
        (
            "protocol enum",
            |v| app(v)["portMappings"][0]["protocol"] = json!("sctp"),
            I,
            &["sctp", "'app'"],
        ),
        (
            "appProtocol enum",
            |v| app(v)["portMappings"][0]["appProtocol"] = json!("ftp"),
            I,
            &["ftp", "'app'"],
        ),
        (
            "port name pattern",
            |v| app(v)["portMappings"][0]["name"] = json!("Web_Port"),
            I,
            &["Web_Port", "'app'"],
        ),
        (
            "port name leading hyphen",
            |v| app(v)["portMappings"][0]["name"] = json!("-web"),
            I,
            &["-web"],
        ),
        (
            "port names duplicate",
            |v| {
                app(v)["portMappings"][0]["name"] = json!("web");
                side(v)["portMappings"] = json!([{"containerPort": 81, "name": "web"}]);
            },
            I,
            &["'web'", "'side'"],
        ),
        (
            "containerPort two protocols",
            |v| {
                app(v)["portMappings"] =
                    json!([{"containerPort": 53}, {"containerPort": 53, "protocol": "udp"}])
            },
            I,
            &["53", "'app'", "udp"],
        ),
        (
            "duplicate static hostPort",
            |v| {
                app(v)["portMappings"][0]["hostPort"] = json!(8080);
                side(v)["portMappings"] = json!([{"containerPort": 81, "hostPort": 8080}]);
            },
            I,
            &["8080", "'app'", "'side'"],
        ),
        (
            "duplicate port in host mode",
            |v| {
                v["networkMode"] = json!("host");
                side(v)["portMappings"] = json!([{"containerPort": 80}]);
            },
            I,
            &["80/tcp", "'side'"],
        ),
        (
            "port range reversed",
            |v| app(v)["portMappings"] = json!([{"containerPortRange": "9000-8000"}]),
            I,
            &["9000-8000", "'app'"],
        ),
        (
            "port range in host mode",
            |v| {
                v["networkMode"] = json!("host");
                app(v)["portMappings"] = json!([{"containerPortRange": "8000-8010"}]);
            },
            I,
            &["8000-8010", "host"],
        ),
        // --- links, hostname, extraHosts
        (
            "links outside bridge",
            |v| {
                v["networkMode"] = json!("host");
                app(v)["links"] = json!(["side"]);
            },
            C,
            &["links", "'app'", "host"],
        ),
        (
            "link to unknown container",
            |v| app(v)["links"] = json!(["ghost:db"]),
            I,
            &["ghost", "'app'"],
        ),
        (
            "hostname with awsvpc",
            |v| {
                v["networkMode"] = json!("awsvpc");
                app(v)["portMappings"] = json!([]);
                app(v)["hostname"] = json!("myhost");
            },
            C,
            &["myhost", "'app'", "awsvpc"],
        ),
        (
            "extraHosts with awsvpc",
            |v| {
                v["networkMode"] = json!("awsvpc");
                app(v)["portMappings"] = json!([]);
                app(v)["extraHosts"] = json!([{"hostname": "db", "ipAddress": "10.0.0.1"}]);
            },
            C,
            &["'db'", "'app'", "awsvpc"],
        ),
        (
            "extraHosts missing ip",
            |v| app(v)["extraHosts"] = json!([{"hostname": "db"}]),
            I,
            &["'db'", "'app'"],
        ),
        // --- essential and dependsOn
        (
            "no essential container",
            |v| app(v)["essential"] = json!(false),
            C,
            &["essential", "'app'", "'side'"],
        ),
        (
            "dependsOn unknown",
            |v| app(v)["dependsOn"] = json!([{"containerName": "ghost", "condition": "START"}]),
            I,
            &["'ghost'", "'app'"],
        ),
        (
            "dependsOn self",
            |v| app(v)["dependsOn"] = json!([{"containerName": "app", "condition": "START"}]),
            I,
            &["itself", "'app'"],
        ),
        (
            "dependsOn condition enum",
            |v| app(v)["dependsOn"] = json!([{"containerName": "side", "condition": "READY"}]),
            I,
            &["READY", "'app'"],
        ),
        (
            "dependsOn cycle",
            |v| {
                app(v)["dependsOn"] = json!([{"containerName": "side", "condition": "START"}]);
                side(v)["dependsOn"] = json!([{"containerName": "app", "condition": "START"}]);
            },
            I,
            &["app -> side -> app"],
        ),
        (
            "dependsOn COMPLETE on essential",
            |v| side(v)["dependsOn"] = json!([{"containerName": "app", "condition": "COMPLETE"}]),
            I,
            &["COMPLETE", "'app'", "'side'"],
        ),
        (
            "dependsOn SUCCESS on essential",
            |v| side(v)["dependsOn"] = json!([{"containerName": "app", "condition": "SUCCESS"}]),
            I,
            &["SUCCESS", "'app'"],
        ),
        (
            "dependsOn HEALTHY without healthCheck",
            |v| app(v)["dependsOn"] = json!([{"containerName": "side", "condition": "HEALTHY"}]),
            I,
            &["HEALTHY", "'side'", "healthCheck"],
        ),
        // --- volumes
        (
            "mountPoint unknown volume",
            |v| app(v)["mountPoints"] = json!([{"sourceVolume": "data", "containerPath": "/data"}]),
            I,
            &["'data'", "'app'"],
        ),
        (
            "mountPoint no containerPath",
            |v| {
                v["volumes"] = json!([{"name": "data"}]);
                app(v)["mountPoints"] = json!([{"sourceVolume": "data"}]);
            },
            I,
            &["containerPath", "'data'", "'app'"],
        ),
        (
            "volumesFrom unknown",
            |v| app(v)["volumesFrom"] = json!([{"sourceContainer": "ghost"}]),
            I,
            &["'ghost'", "'app'"],
        ),
        (
            "volumesFrom self",
            |v| app(v)["volumesFrom"] = json!([{"sourceContainer": "app"}]),
            I,
            &["sourceContainer 'app'", "container 'app'"],
        ),
        (
            "volume name pattern",
            |v| v["volumes"] = json!([{"name": "my vol"}]),
            I,
            &["my vol"],
        ),
        (
            "volume name missing",
            |v| v["volumes"] = json!([{"host": {"sourcePath": "/x"}}]),
            I,
            &["Volume name"],
        ),
        (
            "volume name duplicate",
            |v| v["volumes"] = json!([{"name": "data"}, {"name": "data"}]),
            I,
            &["'data'"],
        ),
        (
            "volume two variants",
            |v| v["volumes"] = json!([{"name": "data", "host": {"sourcePath": "/x"}, "dockerVolumeConfiguration": {"scope": "task"}}]),
            I,
            &["'data'"],
        ),
        (
            "docker volume scope enum",
            |v| {
                v["volumes"] =
                    json!([{"name": "data", "dockerVolumeConfiguration": {"scope": "global"}}])
            },
            I,
            &["global", "'data'"],
        ),
        (
            "autoprovision with task scope",
            |v| v["volumes"] = json!([{"name": "data", "dockerVolumeConfiguration": {"scope": "task", "autoprovision": true}}]),
            I,
            &["autoprovision", "'data'"],
        ),
        // --- placement
        (
            "placement type",
            |v| v["placementConstraints"] = json!([{"type": "distinctInstance"}]),
            I,
            &["distinctInstance"],
        ),
        (
            "placement empty expression",
            |v| v["placementConstraints"] = json!([{"type": "memberOf", "expression": ""}]),
            I,
            &["expression"],
        ),
        (
            "placement long expression",
            |v| {
                v["placementConstraints"] =
                    json!([{"type": "memberOf", "expression": "a".repeat(2001)}])
            },
            I,
            &["2001"],
        ),
        (
            "too many placement constraints",
            |v| {
                v["placementConstraints"] = Value::Array(
                    (0..11)
                        .map(|_| json!({"type": "memberOf", "expression": "attribute:a == b"}))
                        .collect(),
                )
            },
            I,
            &["11"],
        ),
        // --- fargate
        (
            "fargate needs awsvpc",
            |v| {
                v["requiresCompatibilities"] = json!(["FARGATE"]);
                v["cpu"] = json!("256");
                v["memory"] = json!("512");
            },
            C,
            &["awsvpc", "bridge"],
        ),
        (
            "fargate needs cpu and memory",
            |v| {
                v["requiresCompatibilities"] = json!(["FARGATE"]);
                v["networkMode"] = json!("awsvpc");
            },
            C,
            &["cpu", "memory", "None"],
        ),
        (
            "fargate size table",
            |v| {
                v["requiresCompatibilities"] = json!(["FARGATE"]);
                v["networkMode"] = json!("awsvpc");
                v["cpu"] = json!("256");
                v["memory"] = json!("4096");
            },
            C,
            &["256 CPU", "4096 memory"],
        ),
        // --- secrets, env, ulimits, logs
        (
            "secret without valueFrom",
            |v| app(v)["secrets"] = json!([{"name": "DB_PASS", "valueFrom": ""}]),
            I,
            &["DB_PASS", "'app'"],
        ),
        (
            "secret without name",
            |v| app(v)["secrets"] = json!([{"valueFrom": "arn:aws:ssm:x"}]),
            I,
            &["arn:aws:ssm:x", "'app'"],
        ),
        (
            "log secretOptions without valueFrom",
            |v| {
                app(v)["logConfiguration"] =
                    json!({"logDriver": "json-file", "secretOptions": [{"name": "TOKEN"}]})
            },
            I,
            &["TOKEN", "'app'"],
        ),
        (
            "environment name empty",
            |v| app(v)["environment"] = json!([{"name": "", "value": "v1"}]),
            I,
            &["v1", "'app'"],
        ),
        (
            "environment name with =",
            |v| app(v)["environment"] = json!([{"name": "A=B", "value": "v"}]),
            I,
            &["A=B", "'app'"],
        ),
        (
            "environmentFiles type",
            |v| app(v)["environmentFiles"] = json!([{"type": "http", "value": "x"}]),
            I,
            &["http", "'app'"],
        ),
        (
            "ulimit name enum",
            |v| app(v)["ulimits"] = json!([{"name": "files", "softLimit": 1, "hardLimit": 2}]),
            I,
            &["files", "'app'"],
        ),
        (
            "ulimit soft above hard",
            |v| {
                app(v)["ulimits"] =
                    json!([{"name": "nofile", "softLimit": 4096, "hardLimit": 1024}])
            },
            I,
            &["nofile", "4096", "'app'"],
        ),
        (
            "ulimit duplicate",
            |v| app(v)["ulimits"] = json!([{"name": "nofile", "softLimit": 1, "hardLimit": 2}, {"name": "nofile", "softLimit": 1, "hardLimit": 2}]),
            I,
            &["nofile", "'app'"],
        ),
        (
            "logDriver enum",
            |v| app(v)["logConfiguration"] = json!({"logDriver": "loki"}),
            I,
            &["loki", "'app'"],
        ),
        // --- health checks
        (
            "healthCheck command prefix",
            |v| app(v)["healthCheck"] = json!({"command": ["RUN", "true"]}),
            I,
            &["RUN", "'app'"],
        ),
        (
            "healthCheck command empty",
            |v| app(v)["healthCheck"] = json!({"command": []}),
            I,
            &["''", "'app'"],
        ),
        (
            "healthCheck nothing to run",
            |v| app(v)["healthCheck"] = json!({"command": ["CMD-SHELL"]}),
            I,
            &["CMD-SHELL", "'app'"],
        ),
        (
            "healthCheck interval",
            |v| app(v)["healthCheck"] = json!({"command": ["CMD", "true"], "interval": 4}),
            I,
            &["healthCheck.interval", "'app'", ": 4"],
        ),
        (
            "healthCheck timeout",
            |v| app(v)["healthCheck"] = json!({"command": ["CMD", "true"], "timeout": 61}),
            I,
            &["healthCheck.timeout", "61"],
        ),
        (
            "healthCheck retries",
            |v| app(v)["healthCheck"] = json!({"command": ["CMD", "true"], "retries": 0}),
            I,
            &["healthCheck.retries", ": 0"],
        ),
        (
            "healthCheck startPeriod",
            |v| app(v)["healthCheck"] = json!({"command": ["CMD", "true"], "startPeriod": 301}),
            I,
            &["healthCheck.startPeriod", "301"],
        ),
        // --- linux parameters, resources, restart policy, timeouts
        (
            "device permission enum",
            |v| {
                app(v)["linuxParameters"] =
                    json!({"devices": [{"hostPath": "/dev/fuse", "permissions": ["exec"]}]})
            },
            I,
            &["exec", "'app'"],
        ),
        (
            "device hostPath empty",
            |v| app(v)["linuxParameters"] = json!({"devices": [{"hostPath": ""}]}),
            I,
            &["hostPath", "'app'"],
        ),
        (
            "tmpfs size",
            |v| {
                app(v)["linuxParameters"] = json!({"tmpfs": [{"containerPath": "/tmp", "size": 0}]})
            },
            I,
            &["/tmp", "size 0", "'app'"],
        ),
        (
            "swappiness range",
            |v| app(v)["linuxParameters"] = json!({"swappiness": 101}),
            I,
            &["101", "'app'"],
        ),
        (
            "maxSwap negative",
            |v| app(v)["linuxParameters"] = json!({"maxSwap": -2}),
            I,
            &["-2", "'app'"],
        ),
        (
            "resource type enum",
            |v| app(v)["resourceRequirements"] = json!([{"type": "TPU", "value": "1"}]),
            I,
            &["TPU", "'app'"],
        ),
        (
            "gpu count",
            |v| app(v)["resourceRequirements"] = json!([{"type": "GPU", "value": "many"}]),
            I,
            &["many", "'app'"],
        ),
        (
            "restartPolicy enabled required",
            |v| app(v)["restartPolicy"] = json!({"restartAttemptPeriod": 60}),
            I,
            &["enabled", "'app'"],
        ),
        (
            "restartPolicy period",
            |v| app(v)["restartPolicy"] = json!({"enabled": true, "restartAttemptPeriod": 30}),
            I,
            &["30", "'app'"],
        ),
        (
            "stopTimeout negative",
            |v| app(v)["stopTimeout"] = json!(-1),
            I,
            &["stopTimeout", "-1", "'app'"],
        ),
        (
            "systemControls namespace",
            |v| app(v)["systemControls"] = json!([{"value": "1"}]),
            I,
            &["namespace", "'app'"],
        ),
    ]
}

#[test]
fn base_request_is_valid() {
    register(base()).unwrap();
}

#[test]
fn every_rule_rejects_with_kind_and_value() {
    let mut failures = Vec::new();
    for (label, mutate, kind, needles) in rows() {
        let mut v = base();
        mutate(&mut v);
        match register(v) {
            Ok(_) => failures.push(format!("{label}: accepted")),
            Err(e) => {
                if e.kind != kind {
                    failures.push(format!(
                        "{label}: kind {:?} != {kind:?} ({})",
                        e.kind, e.message
                    ));
                }
                for n in needles {
                    if !e.message.contains(n) {
                        failures.push(format!("{label}: message {:?} lacks {n:?}", e.message));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn valid_variants_accepted() {
    let ok: Vec<(&str, Mutation)> = vec![
        ("image with long digest", |v| {
            app(v)["image"] = json!(format!("{}@sha256:{}", "r".repeat(255), "a".repeat(64)))
        }),
        ("task memory replaces container memory", |v| {
            v["memory"] = json!("1 GB");
            app(v).as_object_mut().unwrap().remove("memory");
            side(v).as_object_mut().unwrap().remove("memory");
        }),
        ("reservation only", |v| {
            app(v).as_object_mut().unwrap().remove("memory");
            app(v)["memoryReservation"] = json!(128);
        }),
        ("bridge dynamic ports twice", |v| {
            side(v)["portMappings"] = json!([{"containerPort": 80, "hostPort": 0}])
        }),
        (
            "same port tcp twice",
            |v| app(v)["portMappings"] = json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 80, "hostPort": 8081}]),
        ),
        ("host port reused across protocols", |v| {
            app(v)["portMappings"] = json!([{"containerPort": 53, "hostPort": 53}]);
            side(v)["portMappings"] =
                json!([{"containerPort": 54, "hostPort": 53, "protocol": "udp"}]);
        }),
        ("awsvpc equal ports", |v| {
            v["networkMode"] = json!("awsvpc");
            app(v)["portMappings"][0]["hostPort"] = json!(80);
        }),
        ("links in bridge", |v| app(v)["links"] = json!(["side:db"])),
        ("dependsOn all conditions", |v| {
            side(v)["healthCheck"] = json!({"command": ["CMD-SHELL", "true"]});
            app(v)["dependsOn"] = json!([{"containerName": "side", "condition": "HEALTHY"}, {"containerName": "side", "condition": "SUCCESS"}]);
        }),
        ("volumes and mounts", |v| {
            v["volumes"] = json!([{"name": "data", "host": {"sourcePath": "/srv"}}, {"name": "cache"}, {"name": "shared", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true, "driver": "local"}}]);
            app(v)["mountPoints"] = json!([{"sourceVolume": "data", "containerPath": "/data", "readOnly": true}, {"sourceVolume": "cache", "containerPath": "/cache"}]);
            side(v)["volumesFrom"] = json!([{"sourceContainer": "app"}]);
        }),
        (
            "placement memberOf",
            |v| v["placementConstraints"] = json!([{"type": "memberOf", "expression": "attribute:ecs.cpu-architecture == arm64"}]),
        ),
        ("fargate", |v| {
            v["requiresCompatibilities"] = json!(["FARGATE", "EC2"]);
            v["networkMode"] = json!("awsvpc");
            v["cpu"] = json!("0.25 vCPU");
            v["memory"] = json!("0.5GB");
            app(v)["memory"] = json!(256);
            side(v)["memory"] = json!(64);
        }),
        (
            "tags",
            |v| v["tags"] = json!([{"key": "team", "value": "core"}, {"key": "empty"}]),
        ),
        ("port range bridge", |v| {
            app(v)["portMappings"] = json!([{"containerPortRange": "8000-8010"}])
        }),
        ("ulimits, logs, linux params", |v| {
            app(v)["ulimits"] = json!([{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}]);
            app(v)["logConfiguration"] =
                json!({"logDriver": "json-file", "options": {"max-size": "10m"}});
            app(v)["linuxParameters"] = json!({"capabilities": {"add": ["NET_ADMIN"]}, "initProcessEnabled": true, "swappiness": 0, "tmpfs": [{"containerPath": "/run", "size": 64}]});
            app(v)["restartPolicy"] =
                json!({"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 60});
        }),
    ];
    for (label, mutate) in ok {
        let mut v = base();
        mutate(&mut v);
        if let Err(e) = register(v) {
            panic!("{label}: {e}");
        }
    }
}

// ---------------------------------------------------------------- defaults

#[test]
fn tutorial_echo_matches_reference() {
    // §7.2 request body, verbatim
    let req = json!({"family": "auth", "containerDefinitions": [{"name": "auth", "image": "srirajan/auth", "cpu": 512, "memory": 512, "portMappings": [{"protocol": "tcp", "containerPort": 10080, "hostPort": 0}], "essential": true, "dockerLabels": {"service": "auth"}}]});
    let ctx = ArnContext::new("us-east-1", "123456789012");
    let td = register(req).unwrap().into_registered(
        &ctx,
        1,
        1732180000.123,
        "arn:aws:iam::123456789012:root",
    );
    let got = serde_json::to_value(&td).unwrap();
    // §11.1 echo (plus systemControls: [], which newer ECS responses carry)
    let want = json!({
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/auth:1",
        "containerDefinitions": [{
            "name": "auth", "image": "srirajan/auth", "cpu": 512, "memory": 512,
            "portMappings": [{"containerPort": 10080, "hostPort": 0, "protocol": "tcp"}],
            "essential": true, "environment": [], "mountPoints": [], "volumesFrom": [],
            "dockerLabels": {"service": "auth"}, "systemControls": []
        }],
        "family": "auth",
        "networkMode": "bridge",
        "revision": 1,
        "volumes": [],
        "status": "ACTIVE",
        "placementConstraints": [],
        "compatibilities": ["EC2", "EXTERNAL"],
        "registeredAt": 1732180000.123,
        "registeredBy": "arn:aws:iam::123456789012:root"
    });
    assert_eq!(got, want);
}

#[test]
fn defaults_filled() {
    let mut v = base();
    v["networkMode"] = json!("host");
    v["cpu"] = json!("1 vCPU");
    v["memory"] = json!("1GB");
    app(v_mut(&mut v))["healthCheck"] =
        json!({"command": ["CMD-SHELL", "curl -f localhost"], "startPeriod": 10});
    let spec = register(v).unwrap();
    let td = &spec.task_definition;
    assert_eq!(td.network_mode.as_deref(), Some("host"));
    assert_eq!(td.cpu.as_deref(), Some("1024"));
    assert_eq!(td.memory.as_deref(), Some("1024"));
    assert_eq!(td.revision, 0);
    assert!(td.task_definition_arn.is_none() && td.status.is_none());
    let a = &td.container_definitions[0];
    assert_eq!(a.essential, Some(true));
    let pm = &a.port_mappings.as_ref().unwrap()[0];
    assert_eq!(
        (pm.host_port, pm.protocol.as_deref()),
        (Some(80), Some("tcp"))
    );
    let hc = a.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries, hc.start_period),
        (Some(30), Some(5), Some(3), Some(10))
    );
    let s = &td.container_definitions[1];
    assert_eq!(s.essential, Some(false));
    assert_eq!(s.port_mappings.as_deref(), Some(&[][..]));
    assert_eq!(s.environment.as_deref(), Some(&[][..]));
    assert_eq!(s.system_controls.as_deref(), Some(&[][..]));
    assert!(s.health_check.is_none());
    assert_eq!(
        td.compatibilities.as_deref(),
        Some(&["EC2".to_string(), "EXTERNAL".to_string()][..])
    );
    assert!(td.requires_compatibilities.is_none());

    // bridge: absent hostPort stays absent; protocol lower-cased
    let mut v = base();
    app(&mut v)["portMappings"][0]["protocol"] = json!("UDP");
    let spec = register(v).unwrap();
    let pm = &spec.task_definition.container_definitions[0]
        .port_mappings
        .as_ref()
        .unwrap()[0];
    assert_eq!((pm.host_port, pm.protocol.as_deref()), (None, Some("udp")));

    // FARGATE added to compatibilities when required and valid
    let mut v = base();
    v["requiresCompatibilities"] = json!(["FARGATE"]);
    v["networkMode"] = json!("awsvpc");
    v["cpu"] = json!("512");
    v["memory"] = json!("2048");
    v["tags"] = json!([{"key": "a", "value": "b"}]);
    let spec = register(v).unwrap();
    assert_eq!(
        spec.task_definition.compatibilities.unwrap(),
        vec!["EC2", "EXTERNAL", "FARGATE"]
    );
    assert_eq!(
        spec.task_definition.requires_compatibilities.unwrap(),
        vec!["FARGATE"]
    );
    assert_eq!(
        spec.tags,
        vec![Tag {
            key: "a".into(),
            value: "b".into()
        }]
    );
}

fn v_mut(v: &mut Value) -> &mut Value {
    v
}

#[test]
fn registered_json_shape() {
    let mut v = base();
    v["cpu"] = json!(512);
    v["memory"] = json!("2GB");
    v["tags"] = json!([{"key": "k", "value": "v"}]);
    v["proxyConfiguration"] = json!({"type": "APPMESH", "containerName": "app"});
    let ctx = ArnContext::new("eu-west-1", "000000000000");
    let td = register(v).unwrap().into_registered(
        &ctx,
        7,
        1700000000.5,
        "arn:aws:iam::000000000000:root",
    );
    let j = serde_json::to_value(&td).unwrap();
    fn walk(v: &Value, path: &str) {
        match v {
            Value::Null => panic!("null at {path}"),
            Value::Object(m) => {
                for (k, x) in m {
                    // dockerLabels / options keys are user data; everything else camelCase
                    if !path.ends_with("dockerLabels") && !path.ends_with("options") {
                        assert!(
                            !k.contains('_') && k.chars().next().unwrap().is_ascii_lowercase(),
                            "key {k} at {path}"
                        );
                    }
                    walk(x, &format!("{path}.{k}"));
                }
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            _ => {}
        }
    }
    walk(&j, "");
    assert_eq!(j["cpu"], json!("512"));
    assert_eq!(j["memory"], json!("2048"));
    assert_eq!(j["containerDefinitions"][0]["memory"], json!(256));
    assert!(j["containerDefinitions"][0]["memory"].is_i64());
    assert_eq!(j["revision"], json!(7));
    assert_eq!(
        j["taskDefinitionArn"],
        json!("arn:aws:ecs:eu-west-1:000000000000:task-definition/web:7")
    );
    assert_eq!(j["proxyConfiguration"]["type"], json!("APPMESH"));
    assert!(
        j.get("tags").is_none(),
        "tags are returned beside the task definition"
    );
    // and back
    let back: TaskDefinition = serde_json::from_value(j).unwrap();
    assert_eq!(back, td);
    // the spec itself round-trips (the store persists it)
    let spec = register(base()).unwrap();
    let s = serde_json::to_string(&spec).unwrap();
    assert_eq!(
        serde_json::from_str::<TaskDefinitionSpec>(&s).unwrap(),
        spec
    );
}

// ---------------------------------------------------------------- refs, cpu, memory

#[test]
fn task_definition_refs() {
    let r = |s: &str| parse_task_definition_ref(s);
    assert_eq!(
        r("auth").unwrap(),
        TaskDefRef {
            family: "auth".into(),
            revision: None
        }
    );
    assert_eq!(
        r("auth:3").unwrap(),
        TaskDefRef {
            family: "auth".into(),
            revision: Some(3)
        }
    );
    assert_eq!(
        r("arn:aws:ecs:us-east-1:123456789012:task-definition/auth:12").unwrap(),
        TaskDefRef {
            family: "auth".into(),
            revision: Some(12)
        }
    );
    assert_eq!(
        r("arn:aws:ecs:us-east-1:123456789012:task-definition/auth").unwrap(),
        TaskDefRef {
            family: "auth".into(),
            revision: None
        }
    );
    let e = r("auth:-1").unwrap_err();
    assert_eq!(e.kind, I);
    assert_eq!(e.message, "Invalid revision number. Number: -1");
    for bad in ["auth:abc", "auth:0", "auth:", "auth:+1", "auth:99999999999"] {
        let e = r(bad).unwrap_err();
        assert_eq!(e.kind, I, "{bad}");
        assert!(
            e.message.starts_with("Invalid revision number. Number: "),
            "{bad}"
        );
        assert!(e.message.contains(bad.split(':').nth(1).unwrap()), "{bad}");
    }
    assert_eq!(r("").unwrap_err().kind, C);
    assert_eq!(r("  ").unwrap_err().kind, C);
    assert!(r("a b").unwrap_err().message.contains("a b"));
    assert!(r("arn:aws:ecs:us-east-1:123456789012:cluster/auth").is_err());
    assert!(r("arn:aws:ecs:us-east-1:123456789012:task-definition/a b:1").is_err());
}

#[test]
fn cpu_normalisation_table() {
    for (input, want) in [
        ("1024", "1024"),
        ("128", "128"),
        ("196608", "196608"),
        (" 256 ", "256"),
        ("1 vCPU", "1024"),
        ("1vcpu", "1024"),
        ("0.5 vcpu", "512"),
        ("0.25 vCPU", "256"),
        ("0.125 vCPU", "128"),
        ("2 VCPU", "2048"),
        ("4 vCPUs", "4096"),
        ("192 vCPU", "196608"),
    ] {
        assert_eq!(normalize_cpu(input).unwrap(), want, "{input}");
    }
    for bad in [
        "",
        "abc",
        "127",
        "196609",
        "0",
        "-1",
        "1.5",
        "0.1 vCPU",
        "1 cpu",
        "193 vCPU",
        "99999999999999999999",
    ] {
        let e = normalize_cpu(bad).unwrap_err();
        assert_eq!(e.kind, C, "{bad}");
        assert!(
            e.message.contains(&format!("'{bad}'")),
            "{bad}: {}",
            e.message
        );
    }
}

#[test]
fn memory_normalisation_table() {
    for (input, want) in [
        ("512", "512"),
        ("1024", "1024"),
        ("1GB", "1024"),
        ("1 GB", "1024"),
        ("2 gb", "2048"),
        ("0.5GB", "512"),
        ("1.5 GiB", "1536"),
        ("512 MiB", "512"),
        ("256mb", "256"),
        ("6", "6"),
    ] {
        assert_eq!(normalize_memory(input).unwrap(), want, "{input}");
    }
    for bad in [
        "",
        "big",
        "5",
        "0",
        "-1024",
        "1 TB",
        "0.0001GB",
        "1.5",
        "99999999999999999999",
    ] {
        let e = normalize_memory(bad).unwrap_err();
        assert_eq!(e.kind, C, "{bad}");
        assert!(
            e.message.contains(&format!("'{bad}'")),
            "{bad}: {}",
            e.message
        );
    }
}
