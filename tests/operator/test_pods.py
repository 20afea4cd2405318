from densenet_contract import Env
from densenet_operator import naming, pods, rbac, service
from tests.operator.factories import JOB, make_job


def env_of(pod):
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_ascend_pod_is_wired_for_hccl():
    job = make_job(replicas=2)
    pod = pods.build_pod(job, 1, gang=3)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "dn161-worker-1"
    assert meta["labels"][naming.LABEL_JOB] == "dn161"
    assert meta["labels"][naming.LABEL_REPLICA_INDEX] == "1"
    assert meta["labels"][naming.LABEL_GANG] == "3"
    assert meta["ownerReferences"][0]["uid"] == JOB.uid and meta["ownerReferences"][0]["controller"]
    assert spec["restartPolicy"] == "Never"
    assert (spec["hostname"], spec["subdomain"]) == ("dn161-worker-1", "dn161")
    assert spec["serviceAccountName"] == "dn161-trainer"
    container = spec["containers"][0]
    assert container["resources"]["requests"]["huawei.com/Ascend910"] == "8"
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == "8"
    env = env_of(pod)
    # torchrun's own variables: the launcher passes no topology flags.
    assert env[Env.MASTER_ADDR] == "dn161-worker-0.dn161"
    assert env[Env.MASTER_PORT] == "29500"
    assert (env[Env.NNODES], env[Env.NODE_RANK], env[Env.NPROC_PER_NODE]) == ("2", "1", "8")
    assert env[Env.RANK_TABLE_FILE] == "/user/serverid/devindex/config/hccl.json"
    assert "DEVICE_TYPE" not in env  # the device is sent once, as --device
    assert env["HCCL_IF_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/user/serverid/devindex/config"]["readOnly"]
    assert "/dev/shm" in mounts and "/usr/local/Ascend/driver" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["rank-table"]["configMap"]["name"] == "rings-config-dn161"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["ascend-driver"]["hostPath"]["path"] == "/usr/local/Ascend/driver"


def test_trainer_args_carry_the_recipe():
    job = make_job(
        recipe={
            "epochs": 5,
            "batchSize": 32,
            "lr": 0.8,
            "weightDecay": 0.0001,
            "maxSteps": 100,
            "lrSchedule": {"type": "cosine"},
            "extraArgs": ["--seed", "7"],
        },
        checkpoint={"path": "/ckpt/"},
    )
    args = pods.build_pod(job, 0)["spec"]["containers"][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--arch"] == "densenet161" and flags["--device"] == "npu"
    assert flags["--epochs"] == "5" and flags["--batch-size"] == "32"
    assert flags["--lr"] == "0.8" and flags["--weight-decay"] == "0.0001"
    assert flags["--lr-schedule"] == "cosine"
    assert flags["--checkpoint-dir"] == "/ckpt/dn161"
    assert "--amp" in args
    assert args[args.index("--max-train-steps") + 1] == "100"
    assert args[args.index("--data") + 1] == "/data/imagenet"
    assert args[-2:] == ["--seed", "7"]


def test_cpu_pod_requests_no_device_and_mounts_no_driver():
    job = make_job(
        device={"type": "cpu"},
        devicesPerReplica=2,
        data={"synthetic": True},
        scheduling={"resources": {"requests": {"cpu": "3"}}},
    )
    container = pods.build_pod(job, 0)["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "3", "memory": "4Gi",
                                                  "ephemeral-storage": "10Gi"}  # fmt: skip
    assert container["resources"]["limits"] == {"memory": "4Gi", "ephemeral-storage": "50Gi"}
    assert "--synthetic" in container["args"] and "--data" not in container["args"]
    assert container["args"][container["args"].index("--device") + 1] == "cpu"
    assert not any("Ascend" in m["mountPath"] for m in container["volumeMounts"])
    assert "HCCL_IF_IP" not in env_of(pods.build_pod(job, 0))


def test_data_and_checkpoint_volumes_and_user_env_and_scheduling():
    job = make_job(
        data={"path": "/data", "volume": {"persistentVolumeClaim": {"claimName": "imagenet"}}},
        checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
        env=[{"name": "HCCL_CONNECT_TIMEOUT", "value": "1200"}],
        scheduling={
            "nodeSelector": {"pool": "a"},
            "tolerations": [{"key": "npu", "operator": "Exists"}],
            "schedulerName": "volcano",
            "priorityClassName": "high",
        },
    )
    pod = pods.build_pod(job, 0)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "imagenet"
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "ckpt"
    env = pod["spec"]["containers"][0]["env"]
    assert env[-1] == {"name": "HCCL_CONNECT_TIMEOUT", "value": "1200"}  # the user's wins: last
    assert pod["spec"]["nodeSelector"] == {"pool": "a"}
    assert pod["spec"]["schedulerName"] == "volcano"
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "dn161"


def test_headless_service_selects_the_job():
    svc = service.build_service(JOB)
    assert svc["metadata"]["name"] == "dn161"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {naming.LABEL_JOB: "dn161"}


def test_trainer_role_is_limited_to_its_own_job():
    role = rbac.build_role(JOB)
    for rule in role["rules"]:
        assert rule["resourceNames"] in (["dn161"], ["rings-config-dn161"])
        # list/watch only by name (the launcher's watch of its rank table); never create/delete
        assert set(rule["verbs"]) <= {"get", "patch", "list", "watch"}
        assert "patch" not in rule["verbs"] or rule["resources"] == ["densenettrainings/status"]
    assert not any("secrets" in r["resources"] for r in role["rules"])
    binding = rbac.build_role_binding(JOB)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dn161-trainer", "namespace": "team-a"}
    ]


def test_a_recipe_seed_reaches_the_trainer_and_is_left_out_when_unset():
    seeded = pods.build_pod(make_job(recipe={"seed": 7}), 0)["spec"]["containers"][0]["args"]
    assert seeded[seeded.index("--seed") + 1] == "7"
    unseeded = pods.build_pod(make_job(), 0)["spec"]["containers"][0]["args"]
    assert "--seed" not in unseeded


def test_a_volume_source_never_names_the_pod_s_volume():
    job = make_job(data={"path": "/d", "volume": {"persistentVolumeClaim": {"claimName": "c"}}})
    volumes = [v["name"] for v in pods.build_pod(job, 0)["spec"]["volumes"]]
    assert len(volumes) == len(set(volumes)) and "data" in volumes


def test_pods_get_the_grace_period_of_a_graceful_stop():
    assert pods.build_pod(make_job(), 0)["spec"]["terminationGracePeriodSeconds"] == 120
    job = make_job(runPolicy={"terminationGracePeriodSeconds": 600})
    assert pods.build_pod(job, 0)["spec"]["terminationGracePeriodSeconds"] == 600
