"""ROS bags for tests, written with rosbags from a rendered flight (video + CSV telemetry): the
camera as sensor_msgs/Image (or CompressedImage JPEG), the position as NavSatFix, the heading as
an Imu orientation (REP 103: ENU world, FLU body), the height above home as MAVROS's rel_alt
(std_msgs/Float64), all stamped on one UTC clock from T0."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

T0 = 1_700_000_000.0  # 2023-11-14 UTC: the bag's clock at the first frame
HOME_AMSL = 430.0


def write_bag(path: Path, video: Path, telemetry_csv: Path, kind: str = "ros1", compressed: bool = False,
              image: bool = True, fps: float | None = None) -> Path:
    """kind: ros1 (.bag), ros2 (folder, sqlite3) or mcap (folder, MCAP storage)."""
    from rosbags.typesys import Stores, get_typestore

    ros1 = kind == "ros1"
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    T = store.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr

    def header(t: float, seq: int):
        sec = int(math.floor(t))
        stamp = Time(sec=sec, nanosec=int(round((t - sec) * 1e9)))
        return Header(seq=seq, stamp=stamp, frame_id="camera") if ros1 else Header(stamp=stamp, frame_id="camera")

    if ros1:
        from rosbags.rosbag1 import Writer

        writer = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3)
    cap = cv2.VideoCapture(str(video))
    fps = fps or cap.get(cv2.CAP_PROP_FPS)
    rows = list(csv.DictReader(open(telemetry_csv)))
    zeros9 = np.zeros(9, np.float64)
    with writer:
        img_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        cam = writer.add_connection("/camera/image" + ("/compressed" if compressed else ""), img_type, typestore=store) \
            if image else None
        fix = writer.add_connection("/mavros/global_position/global", "sensor_msgs/msg/NavSatFix", typestore=store)
        imu = writer.add_connection("/mavros/imu/data", "sensor_msgs/msg/Imu", typestore=store)
        rel = writer.add_connection("/mavros/global_position/rel_alt", "std_msgs/msg/Float64", typestore=store)
        for i, r in enumerate(rows):
            t = T0 + float(r["time"])
            h = header(t, i)
            msg = T["sensor_msgs/msg/NavSatFix"](
                header=h, status=T["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
                latitude=float(r["lat"]), longitude=float(r["lon"]), altitude=HOME_AMSL + float(r["alt"]),
                position_covariance=zeros9, position_covariance_type=0)
            writer.write(fix, int(round(t * 1e9)), serialize(msg, "sensor_msgs/msg/NavSatFix"))
            writer.write(rel, int(round(t * 1e9)), serialize(T["std_msgs/msg/Float64"](data=float(r["alt"])),
                                                             "std_msgs/msg/Float64"))
            yaw_enu = math.radians(90.0 - float(r["yaw"]))
            q = T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw_enu / 2), w=math.cos(yaw_enu / 2))
            v = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
            msg = T["sensor_msgs/msg/Imu"](header=h, orientation=q, orientation_covariance=zeros9, angular_velocity=v,
                                           angular_velocity_covariance=zeros9, linear_acceleration=v,
                                           linear_acceleration_covariance=zeros9)
            writer.write(imu, int(round(t * 1e9)) + 1, serialize(msg, "sensor_msgs/msg/Imu"))
        i = 0
        while cam is not None:
            ok, bgr = cap.read()
            if not ok:
                break
            t = T0 + i / fps
            if compressed:
                data = np.frombuffer(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), np.uint8)
                msg = T[img_type](header=header(t, i), format="jpeg", data=data)
            else:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                h_, w_ = rgb.shape[:2]
                msg = T[img_type](header=header(t, i), height=h_, width=w_, encoding="rgb8", is_bigendian=0,
                                  step=3 * w_, data=np.ascontiguousarray(rgb).reshape(-1))
            # the driver publishes a frame 30 ms after its exposure: the bag's receive time is later
            writer.write(cam, int(round((t + 0.03) * 1e9)), serialize(msg, img_type))
            i += 1
    cap.release()
    return path
