#!/bin/sh
# The image's user: uid and gid 1000 named medo1, home /home/medo1, on any base. Ubuntu 24.04 (the base of
# pytorch/pytorch's devel images since pytorch/pytorch#166907) already has uid and gid 1000 as `ubuntu`, where
# `groupadd --gid 1000` fails: an existing user or group at 1000 is renamed instead.
# Also the mount points of the chart's volumes, owned by that user so that an image run without volumes works.
set -eu

group=$(getent group 1000 | cut -d: -f1) || group=
if [ -z "$group" ]; then
    groupadd --gid 1000 medo1
elif [ "$group" != medo1 ]; then
    groupmod --new-name medo1 "$group"
fi

user=$(getent passwd 1000 | cut -d: -f1) || user=
if [ -z "$user" ]; then
    useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash medo1
elif [ "$user" != medo1 ]; then
    usermod --login medo1 --home /home/medo1 --move-home --gid 1000 --shell /bin/bash "$user"
fi
mkdir -p /home/medo1
chown 1000:1000 /home/medo1

mkdir -p /data /checkpoints /hf-cache
chown 1000:1000 /data /checkpoints /hf-cache
