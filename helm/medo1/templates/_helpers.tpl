{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "medo1.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for every object. */}}
{{- define "medo1.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "medo1.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medo1.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "medo1.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "medo1.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medo1
{{- end -}}

{{- define "medo1.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "medo1.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Claim name of a storage entry: the existing claim, or the one this chart creates. Call with (list $ "data"). */}}
{{- define "medo1.claimName" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $volume := index $root.Values.storage $key -}}
{{- if $volume.existingClaim -}}
{{- $volume.existingClaim -}}
{{- else -}}
{{- printf "%s-%s" (include "medo1.fullname" $root) ($key | kebabcase) -}}
{{- end -}}
{{- end -}}

{{- define "medo1.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/* Processes per node: one per GPU, or cpuProcsPerNode on CPU-only nodes. */}}
{{- define "medo1.nprocPerNode" -}}
{{- if gt (int .Values.cluster.gpusPerNode) 0 -}}
{{- .Values.cluster.gpusPerNode -}}
{{- else -}}
{{- .Values.cluster.cpuProcsPerNode -}}
{{- end -}}
{{- end -}}

{{/* The training command of a stage: torchrun reads PET_* (PyTorchJob) or its flags (TrainJob). Call with (list $ "sft"). */}}
{{- define "medo1.stageArgs" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $stage := index $root.Values.stages $name -}}
- -m
- medo1
- {{ $name }}
- --config
- {{ $stage.recipe }}
- --resume
- auto
{{- range $stage.set }}
- --set
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Environment of a stage's container: caches, NCCL, and by reference only the Secrets the stage
reads (stageSecrets), each optional as `secrets` says. Call with (list $ "sft"). */}}
{{- define "medo1.env" -}}
{{- $root := index . 0 -}}
{{- $stage := index . 1 -}}
{{- with $root -}}
- name: HF_HOME
  value: {{ .Values.storage.hfCache.mountPath | quote }}
- name: HF_HUB_ENABLE_HF_TRANSFER
  value: "0"
- name: TOKENIZERS_PARALLELISM
  value: "false"
{{- /* torchrun forwards SIGTERM to its workers, then SIGKILLs them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT
seconds (default 30, torch/distributed/run.py --shutdown-timeout): the preemption save (medo1.training.preemption)
gets the pod's grace period, less 30 s for torchrun itself to exit. */}}
- name: TORCH_ELASTIC_SHUTDOWN_TIMEOUT
  value: {{ max 30 (sub (int (include "medo1.gracePeriod" (list $root $stage))) 30) | quote }}
{{- range $name, $value := .Values.nccl }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- /* The run pod's Secrets are optional: a missing one would hold it in CreateContainerConfigError, which no
controller ends; started without it, the launcher's input check names what cannot be read, in one line. */}}
{{- range $key := index .Values.stageSecrets $stage | default list }}
{{- $secret := index $root.Values.secrets $key }}
{{- if $secret.name }}
- name: {{ $secret.key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name }}
      key: {{ $secret.key }}
      optional: {{ or (eq $stage "run") ($secret.optional | default false) }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* A pod template's metadata: selector labels, the component, podLabels and podAnnotations. Call with (list $ "sft"). */}}
{{- define "medo1.podMetadata" -}}
{{- $root := index . 0 -}}
labels:
  {{- include "medo1.selectorLabels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ index . 1 }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $root.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The run pod's metadata: a pod's, and what tells the cluster autoscaler and Karpenter not to evict it to
consolidate nodes (cluster-autoscaler FAQ "What types of pods can prevent CA from removing a node?";
karpenter.sh/do-not-disrupt): its training job runs on without it, but a run pod evicted for nothing costs
a re-attach. A node drain is held back by the PodDisruptionBudget (templates/run-pdb.yaml). */}}
{{- define "medo1.runPodMetadata" -}}
{{- $metadata := include "medo1.podMetadata" (list . "run") | fromYaml -}}
{{- $evict := dict "cluster-autoscaler.kubernetes.io/safe-to-evict" "false" "karpenter.sh/do-not-disrupt" "true" -}}
{{- $_ := set $metadata "annotations" (merge $evict ($metadata.annotations | default dict)) -}}
{{ toYaml $metadata }}
{{- end -}}

{{/* The container securityContext. RDMA adds no capability (values.yaml cluster.rdma: the node's memlock limit). */}}
{{- define "medo1.containerSecurityContext" -}}
{{- if and .Values.cluster.rdma.enabled (eq (toString (index (.Values.nccl | default dict) "NCCL_IB_DISABLE")) "1") -}}
{{- fail "cluster.rdma asks for an InfiniBand / RoCE device but nccl.NCCL_IB_DISABLE is \"1\": NCCL would not use it; remove it" -}}
{{- end -}}
{{ toYaml .Values.securityContext }}
{{- end -}}

{{- define "medo1.resources" -}}
{{- $limits := dict "cpu" .Values.cluster.cpu "memory" .Values.cluster.memory -}}
{{- if gt (int .Values.cluster.gpusPerNode) 0 -}}
{{- $_ := set $limits .Values.cluster.gpuResource (int .Values.cluster.gpusPerNode) -}}
{{- end -}}
{{- if .Values.cluster.rdma.enabled -}}
{{- $_ := set $limits .Values.cluster.rdma.resource (int .Values.cluster.rdma.count) -}}
{{- end -}}
limits:
{{ toYaml $limits | indent 2 }}
requests:
{{ toYaml $limits | indent 2 }}
{{- end -}}

{{- define "medo1.volumeMounts" -}}
{{- range $key := list "data" "checkpoints" "hfCache" }}
- name: {{ $key | kebabcase }}
  mountPath: {{ (index $.Values.storage $key).mountPath }}
{{- end }}
- name: dshm
  mountPath: /dev/shm
{{- end -}}

{{- define "medo1.volumes" -}}
{{- range $key := list "data" "checkpoints" "hfCache" }}
- name: {{ $key | kebabcase }}
  persistentVolumeClaim:
    claimName: {{ include "medo1.claimName" (list $ $key) }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.cluster.shmSize }}
{{- end -}}

{{/* A stage's SIGTERM-to-SIGKILL time: its own terminationGracePeriodSeconds (stages.* / jobs.*), else the
chart's. The launcher sizes it from the stage's checkpoint instead (medo1.launch.grace), with this as the floor.
Call with (list $ "sft"). */}}
{{- define "medo1.gracePeriod" -}}
{{- $root := index . 0 -}}
{{- $stage := index . 1 -}}
{{- $config := or (index $root.Values.stages $stage) (index $root.Values.jobs $stage) | default dict -}}
{{- $config.terminationGracePeriodSeconds | default $root.Values.terminationGracePeriodSeconds -}}
{{- end -}}

{{/* Pod-level settings shared by every stage pod. Call with (list $ "sft"). */}}
{{- define "medo1.podSpecCommon" -}}
{{- $stage := index . 1 -}}
{{- with index . 0 -}}
serviceAccountName: {{ include "medo1.serviceAccountName" . }}
terminationGracePeriodSeconds: {{ include "medo1.gracePeriod" (list . $stage) }}
{{- with .Values.scheduling.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
{{ toYaml .Values.podSecurityContext | indent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.cluster.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.cluster.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.cluster.affinity }}
affinity:
{{ toYaml . | indent 2 }}
{{- end }}
automountServiceAccountToken: false
volumes:
{{ include "medo1.volumes" . | trim | indent 2 }}
{{- end -}}
{{- end -}}

{{/* The training container. Call with (list $ "sft" "pytorch"); the last item is the container name. */}}
{{- define "medo1.trainingContainer" -}}
{{- $root := index . 0 -}}
{{- $stage := index . 1 -}}
{{- $container := index . 2 -}}
- name: {{ $container }}
  image: {{ include "medo1.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["torchrun"]
  args:
{{ include "medo1.stageArgs" (list $root $stage) | indent 4 }}
  env:
{{ include "medo1.env" (list $root $stage) | trim | indent 4 }}
  resources:
{{ include "medo1.resources" $root | indent 4 }}
  securityContext:
{{ include "medo1.containerSecurityContext" $root | indent 4 }}
  volumeMounts:
{{ include "medo1.volumeMounts" $root | trim | indent 4 }}
{{- end -}}

{{/* A job as the cluster holds it: on `helm upgrade` a job that exists is rendered back unchanged, its live
spec, so an upgrade neither changes a run in progress (a batch Job's pod template is immutable anyway) nor
creates it again; the new values apply to jobs created afterwards (values.yaml, "Upgrades"). `lookup` reads
the cluster only in `helm install` / `upgrade`: `helm template` renders afresh. Call with the live object. */}}
{{- define "medo1.kept" -}}
apiVersion: {{ .apiVersion }}
kind: {{ .kind }}
metadata:
  name: {{ .metadata.name }}
  {{- with .metadata.labels }}
  labels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- toYaml .spec | nindent 2 }}
{{- end -}}

{{- /* Turning the chain on drops the stage jobs the chart rendered with the chain off from the release, and Helm
deletes what a release drops: a training job mid-run. Refuse such an upgrade while one of them is not finished
(no Succeeded / Complete / Failed condition); a finished one goes (the chain's run starts anew under its own
names). The kinds looked up are those these values render with the chain off. */}}
{{- define "medo1.refuseDroppingRunningStageJobs" -}}
{{- $fullname := include "medo1.fullname" . -}}
{{- $training := ternary (list "trainer.kubeflow.org/v1alpha1" "TrainJob") (list "kubeflow.org/v1" "PyTorchJob") (eq .Values.backend "trainjob") -}}
{{- range $stage := list "translate" "sft" "rl" "eval" "upload" -}}
{{- $kind := ternary $training (list "batch/v1" "Job") (has $stage (list "sft" "rl")) -}}
{{- $name := printf "%s-%s" $fullname $stage -}}
{{- with lookup (index $kind 0) (index $kind 1) $.Release.Namespace $name -}}
{{- $finished := false -}}
{{- range (.status | default dict).conditions | default list -}}
{{- if and (has .type (list "Succeeded" "Complete" "Failed")) (eq (toString .status) "True") -}}{{- $finished = true -}}{{- end -}}
{{- end -}}
{{- if and (not $finished) (eq (index (.metadata.labels | default dict) "app.kubernetes.io/managed-by") "Helm") -}}
{{- fail (printf "chain.enabled=true would delete %s %s, which the chart started with the chain off and which is still running: wait for it to finish, or delete it (kubectl delete %s -n %s %s), then upgrade" (index $kind 1) $name (lower (index $kind 1)) $.Release.Namespace $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
