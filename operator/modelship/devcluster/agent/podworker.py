"""One pod's life on the agent: sandbox (address, volumes), init containers in order, then
the containers side by side with their probes and restarts, then shutdown and deletion.

A thread per pod and one per running container; every change of a container's state goes
through `publish`, which computes the status (pure, `podstatus`) and writes it through the
pods/status subresource only when it differs from what was last written.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from modelship.devcluster import imageenv
from modelship.devcluster.agent import events, images, probes
from modelship.devcluster.agent.backoff import BackoffPolicy, should_restart
from modelship.devcluster.agent.envvars import ConfigError, container_env, expand
from modelship.devcluster.agent.kube import ApiError, Kube
from modelship.devcluster.agent.podstatus import ContainerView, pod_status, terminated, waiting
from modelship.devcluster.agent.process import AGENT_DIR_ENV, POD_UID_ENV, ContainerProcess
from modelship.devcluster.agent.volumes import VolumeWriter, mount_plan
from modelship.devcluster.errors import DevClusterError

log = logging.getLogger("modelship.agent")

HOST_IP = "127.0.0.1"
MESSAGE_LIMIT = 4096
LOG_FALLBACK_LINES, LOG_FALLBACK_BYTES = 80, 2048
TICK = 0.1
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOKEN_REFRESH_SECONDS = 1800.0  # tokens are asked for ~1 h, like the kubelet's; renewed at half-life
VOLUME_SYNC_SECONDS = 3.0  # how often mounted configMaps and Secrets are compared with the API (kubelet: ~1 min)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def termination_message(path: Path, log_path: Path, *, policy: str, exit_code: int) -> str:
    """The file the container wrote, or with FallbackToLogsOnError the tail of a failed run's log."""
    try:
        message = path.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        message = ""
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        try:
            lines = log_path.read_bytes().decode(errors="replace").splitlines()[-LOG_FALLBACK_LINES:]
        except OSError:
            lines = []
        message = "\n".join(lines)[-LOG_FALLBACK_BYTES:]
    return message


class PodWorker:
    """Runs one pod; `update` feeds it the latest object from the watch."""

    def __init__(self, *, kube: Kube, pod: dict[str, Any], pod_ip: str, pod_dir: Path, agent_dir: Path,
                 backoff: BackoffPolicy, api_address: tuple[str, int], on_exit: Callable[["PodWorker"], None]) -> None:
        self.kube = kube
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.name = pod["metadata"]["name"]
        self.namespace = pod["metadata"]["namespace"]
        self.pod_ip = pod_ip
        self.dir = pod_dir
        self.agent_dir = agent_dir
        self.backoff = backoff
        self.api_address = api_address
        self.on_exit = on_exit
        spec = pod.get("spec", {})
        self.init = [Container(self, c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(self, c, init=False) for c in spec.get("containers") or []]
        self.sandbox_ready = False
        self.start_time = now_iso()
        self.stopping = threading.Event()
        self.stop_deadline = 0.0
        self.delete_when_stopped = False
        self.gone = False  # the object was deleted outright: nothing to write any more
        self._lock = threading.Lock()
        self._written: dict[str, Any] | None = None
        self._retry_pending = False
        self.volumes: dict[str, Path] = {}
        self.thread = threading.Thread(target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        """Succeeded or Failed: its resources are free again."""
        return (self._written or {}).get("phase") in ("Succeeded", "Failed")

    @property
    def restart_policy(self) -> str:
        return self.pod.get("spec", {}).get("restartPolicy", "Always")

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.stopping.is_set():
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
            self.stop(float(grace), delete=True)

    def stop(self, grace: float, *, delete: bool, gone: bool = False) -> None:
        self.gone = self.gone or gone
        self.delete_when_stopped = self.delete_when_stopped or delete
        if not self.stopping.is_set():
            self.stop_deadline = time.monotonic() + grace
            self.stopping.set()

    def grace_left(self) -> float:
        return max(0.0, self.stop_deadline - time.monotonic())

    # ---- the pod's life ------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # a bug must not take the agent down; the log says what happened
            log.exception("pod %s: worker failed", self.key)
        finally:
            for container in self.init + self.containers:
                container.kill_now()
            self.on_exit(self)  # address and folder released before the object goes, like a kubelet
            if self.delete_when_stopped and not self.gone:
                try:
                    self.kube.call("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                                   {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
                except ApiError as exc:
                    if exc.status not in (404, 409):
                        log.warning("pod %s: final delete failed: %s", self.key, exc)

    def _run(self) -> None:
        self.publish()
        writer = VolumeWriter(self.kube, self.pod, self.dir, pod_ip=self.pod_ip, host_ip=HOST_IP)
        while not self.stopping.is_set():
            try:
                self.volumes = writer.materialize()
                break
            except (ConfigError, ApiError, OSError) as exc:
                for container in self.init[:1] or self.containers:
                    container.view.state = waiting("ContainerCreating", f"MountVolume.SetUp failed: {exc}")
                self.publish()
                self.stopping.wait(3.0)
        if self.stopping.is_set():
            return
        self.sandbox_ready = True
        threading.Thread(target=self._sync_volumes, args=(writer,), name=f"volumes-{self.key}", daemon=True).start()
        for container in self.init + self.containers:
            container.view.state = waiting("PodInitializing" if self.init else "ContainerCreating")
        self.publish()
        for container in self.init:
            if not container.run() or self.stopping.is_set():
                self.stopping.wait()
                return
        threads = [threading.Thread(target=c.run_safely, name=f"{self.key}/{c.name}", daemon=True) for c in self.containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.stopping.wait()  # a finished pod keeps its status and folder until it is deleted

    def _sync_volumes(self, writer: VolumeWriter) -> None:
        """Poll the mounted configMaps and Secrets (a GET each per period: a watch per object would
        cost more connections than the dev cluster's few pods save) and renew tokens at half-life."""
        renew_at = time.monotonic() + TOKEN_REFRESH_SECONDS
        while not self.stopping.wait(VOLUME_SYNC_SECONDS):
            renew = time.monotonic() >= renew_at
            try:
                for name, change in writer.sync(renew_tokens=renew):
                    log.info("pod %s: volume %s updated (%s)", self.key, name, change.describe())
            except (ApiError, OSError) as exc:
                log.warning("pod %s: volume sync failed (retrying): %s", self.key, exc)
                continue
            if renew:
                renew_at = time.monotonic() + TOKEN_REFRESH_SECONDS

    def event(self, reason: str, message: str, container: str, kind: str = "Warning") -> None:
        if not self.gone:
            events.emit(self.kube, self.pod, reason=reason, message=message, container=container, kind=kind)

    # ---- status ------------------------------------------------------------------------

    def publish(self) -> None:
        with self._lock:
            if self.gone:
                return
            previous = self._written or self.pod.get("status", {})
            status = pod_status({**self.pod, "status": previous},
                                init=[c.view for c in self.init], containers=[c.view for c in self.containers],
                                sandbox_ready=self.sandbox_ready, pod_ip=self.pod_ip if self.sandbox_ready else "",
                                host_ip=HOST_IP, start_time=self.start_time, now=now_iso())
            if status == self._written:
                return
            try:
                self.kube.call("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                               {"status": status}, content_type="application/merge-patch+json")
                self._written = status
            except ApiError as exc:
                if exc.status == 404:
                    self.gone = True
                    self.stop(0, delete=False, gone=True)
                else:  # try again soon: a lost final status would leave a Job waiting forever
                    log.warning("pod %s: status update failed (retrying): %s", self.key, exc)
                    if not self._retry_pending:
                        self._retry_pending = True
                        timer = threading.Timer(1.0, self._retry_publish)
                        timer.daemon = True
                        timer.start()

    def _retry_publish(self) -> None:
        self._retry_pending = False
        self.publish()

    # ---- helpers the containers use ----------------------------------------------------

    def base_env(self) -> dict[str, str]:
        host, port = self.api_address
        return {
            "PATH": SYSTEM_PATH,
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": self.name,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{host}:{port}",
            "MODELSHIP_LISTEN_ADDRESS": self.pod_ip,
        }

    def lookup(self, kind: str, name: str, key: str) -> str | None:
        values = self.lookup_all(kind, name)
        return None if values is None else values.get(key)

    def lookup_all(self, kind: str, name: str) -> dict[str, str] | None:
        import base64

        plural = "configmaps" if kind == "configmap" else "secrets"
        obj = self.kube.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        if obj is None:
            return None
        if kind == "secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Container:
    """One container of the pod: its view in the status, its runs, probes and restarts."""

    def __init__(self, worker: PodWorker, spec: dict[str, Any], *, init: bool) -> None:
        self.worker = worker
        self.spec = spec
        self.name = spec["name"]
        self.is_init = init
        self.view = ContainerView(self.name, spec.get("image", ""))
        self.process: ContainerProcess | None = None
        self.env: dict[str, str] = {}
        self.dir = worker.dir / "containers" / self.name

    def publish(self) -> None:
        self.worker.publish()

    def kill_now(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.stop(0)

    def run_safely(self) -> None:
        try:
            self.run()
        except Exception:  # a bug in one container's loop must not leave its process unwatched
            log.exception("pod %s: container %s failed", self.worker.key, self.name)
            self.kill_now()

    def run(self) -> bool:
        """Run until done (init: until success); True when it completed successfully."""
        worker = self.worker
        local = images.resolve(self.view.image)
        if local is None:
            message = images.unknown_image_message(self.view.image)
            self.view.state = waiting("ErrImagePull", message)
            self.publish()
            worker.event("Failed", f"Failed to pull image \"{self.view.image}\": {message}", self.name)
            if worker.stopping.wait(min(worker.backoff.initial, 5.0)):
                return False
            self.view.state = waiting("ImagePullBackOff", f'Back-off pulling image "{self.view.image}": {message}')
            self.publish()
            worker.stopping.wait()
            return False
        venv = self.image_environment(local)
        if venv is None:
            return False
        self.view.image_id = f"local://{venv}"
        failures = 0
        runs = 0
        while not worker.stopping.is_set():
            try:
                argv, env, mounts = self.configure(local, venv)
            except (ConfigError, ApiError) as exc:
                if self.view.state.get("waiting", {}).get("reason") != "CreateContainerConfigError":
                    worker.event("Failed", f"Error: {exc}", self.name)
                self.view.state = waiting("CreateContainerConfigError", str(exc))
                self.publish()
                worker.stopping.wait(3.0)
                continue
            self.dir.mkdir(parents=True, exist_ok=True)
            termination_log = self.dir / "termination-log"
            termination_log.write_bytes(b"")
            log_path = self.dir / f"{runs}.log"
            self.env = env
            self.view.restart_count = runs
            runs += 1
            started_at = now_iso()
            process = ContainerProcess(argv, env, mounts=mounts, working_dir=self.spec.get("workingDir"),
                                       run_dir=self.dir, termination_log=termination_log, log=log_path,
                                       keep=(str(venv),))
            self.process = process
            self.view.container_id = f"local://{process.pid}"
            has_startup = bool(self.spec.get("startupProbe")) and not self.is_init
            self.view.started = not has_startup and not self.is_init
            self.view.ready = self.view.started and not self.spec.get("readinessProbe")
            self.view.state = {"running": {"startedAt": started_at}}
            self.publish()
            code, reason = self.supervise(process)
            ran_for = time.time() - process.started
            exit_code = code if code >= 0 else 128 - code
            message = termination_message(termination_log, log_path,
                                          policy=self.spec.get("terminationMessagePolicy", "File"),
                                          exit_code=exit_code)
            if reason and not message:
                message = reason
            finished = terminated(code, started_at=started_at, finished_at=now_iso(), message=message,
                                  container_id=self.view.container_id)
            self.view.started = False
            self.view.ready = False
            if worker.stopping.is_set() or not should_restart(worker.restart_policy, exit_code, init=self.is_init):
                self.view.state = finished
                self.publish()
                return exit_code == 0 and not worker.stopping.is_set()
            failures = worker.backoff.failures_after_run(failures, ran_for)
            delay = worker.backoff.delay(failures)
            self.view.last_state = finished
            if delay > 0:
                self.view.state = waiting("CrashLoopBackOff", f"back-off {delay:g}s restarting failed container="
                                          f"{self.name} pod={worker.name}_{worker.namespace}({worker.uid})")
                self.publish()
                worker.event("BackOff", f"Back-off restarting failed container {self.name} in pod {worker.name}",
                             self.name)
                worker.stopping.wait(delay)
        return False

    def image_environment(self, local: images.LocalImage) -> Path | None:
        """The image's venv (built like its Dockerfile, cached), as a kubelet pulls an image: the
        Pulling/Pulled events, ErrImagePull and a retry when it cannot be built; None if stopped."""
        worker = self.worker
        while not worker.stopping.is_set():
            started = time.monotonic()
            worker.event("Pulling", f'Pulling image "{self.view.image}" (its environment: {local.env.lock})',
                         self.name)
            try:
                venv = imageenv.ensure(local.env, progress=lambda line: log.info("image %s: %s", local.repository, line))
            except (DevClusterError, OSError) as exc:
                message = f"cannot build the environment of image {self.view.image}: {exc}"
                self.view.state = waiting("ErrImagePull", message)
                self.publish()
                worker.event("Failed", f'Failed to pull image "{self.view.image}": {message}', self.name)
                worker.stopping.wait(10.0)
                continue
            worker.event("Pulled", f'Successfully pulled image "{self.view.image}" in '
                         f"{time.monotonic() - started:.3f}s (local environment {venv.name})", self.name)
            return venv
        return None

    def configure(self, local: images.LocalImage, venv: Path) -> tuple[list[str], dict[str, str], list[dict]]:
        worker = self.worker
        base = worker.base_env()
        base["PATH"] = f"{venv / 'bin'}:{SYSTEM_PATH}"  # the image's commands, not the agent's venv
        env = container_env(self.spec, worker.pod, base=base, lookup=worker.lookup,
                            lookup_all=worker.lookup_all, pod_ip=worker.pod_ip, host_ip=HOST_IP)
        argv = [expand(part, env) for part in images.argv(local, self.spec.get("command"), self.spec.get("args"))]
        env[AGENT_DIR_ENV] = str(worker.agent_dir)
        env[POD_UID_ENV] = worker.uid
        mounts = mount_plan(self.spec, worker.volumes, self.dir / "termination-log")
        return argv, env, mounts

    def supervise(self, process: ContainerProcess) -> tuple[int, str]:
        """Watch the running process and its probes; (exit code, why the agent killed it or '')."""
        worker = self.worker
        started = time.monotonic()
        trackers = {} if self.is_init else {
            kind: probes.ProbeTracker(self.spec[f"{kind}Probe"], started)
            for kind in ("startup", "liveness", "readiness") if self.spec.get(f"{kind}Probe")
        }
        while True:
            code = process.poll()
            if code is not None:
                process.reap_group()
                return code, ""
            if worker.stopping.is_set():
                return self.shut_down(process, worker.grace_left()), ""
            now = time.monotonic()
            startup = trackers.get("startup")
            if startup is not None and startup.result is not True:
                if startup.due(now):
                    result = startup.record(*self._probe(startup), now=time.monotonic())
                    if result is True:
                        self.view.started = True
                        self.view.ready = "readiness" not in trackers
                        self.publish()
                    elif result is False:
                        why = f"Startup probe failed: {startup.last_message}"
                        worker.event("Unhealthy", why, self.name)
                        return self.shut_down(process, self._grace()), why
            else:
                liveness = trackers.get("liveness")
                if liveness is not None and liveness.due(now):
                    if liveness.record(*self._probe(liveness), now=time.monotonic()) is False:
                        why = f"Liveness probe failed: {liveness.last_message}"
                        worker.event("Unhealthy", why, self.name)
                        return self.shut_down(process, self._grace()), why
                readiness = trackers.get("readiness")
                if readiness is not None and readiness.due(now):
                    readiness.record(*self._probe(readiness), now=time.monotonic())
                    ready = readiness.result is True
                    if ready != self.view.ready:
                        if not ready:
                            worker.event("Unhealthy", f"Readiness probe failed: {readiness.last_message}", self.name)
                        self.view.ready = ready
                        self.publish()
            time.sleep(TICK)

    def _probe(self, tracker: probes.ProbeTracker) -> tuple[bool, str]:
        process = self.process
        return probes.check(tracker.spec, pod_ip=self.worker.pod_ip, ports=self.spec.get("ports") or [],
                            pid=process.pid if process else 0, env=self.env, timeout=tracker.timeout)

    def _grace(self) -> float:
        return float(self.worker.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    def shut_down(self, process: ContainerProcess, grace: float) -> int:
        """preStop (within the grace period), then SIGTERM, then SIGKILL when the grace runs out."""
        deadline = time.monotonic() + grace
        hook = (self.spec.get("lifecycle") or {}).get("preStop")
        if hook and not self.is_init and process.poll() is None:
            done = threading.Event()

            def run_hook() -> None:
                probes.check(hook, pod_ip=self.worker.pod_ip, ports=self.spec.get("ports") or [],
                             pid=process.pid, env=self.env, timeout=max(grace, 1.0))
                done.set()

            threading.Thread(target=run_hook, daemon=True).start()
            done.wait(grace)
        return process.stop(max(0.0, deadline - time.monotonic()))
