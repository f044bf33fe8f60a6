"""ROS recordings: a rendered flight written as ROS 1 and ROS 2 bags (rosbags) replays as its video
and CSV do; attitude conventions; bags without a camera, corrupt bags."""
import math

import numpy as np
import pytest

from skyloc.errors import SkylocError
from skyloc.onboard.bags import BagTopics, attitude_deg, open_bag
from skyloc.onboard.replay import open_flight, replay
from skyloc.onboard.telemetry import load_telemetry
from skyloc.runtime.cache import TileCache
from skyloc.runtime.localizer import Localizer, LocalizerConfig
from tests.bagfiles import write_bag


def _start(flight):
    import csv

    row = next(csv.DictReader(open(flight / "f.csv")))
    return float(row["lat"]) + 0.0002, float(row["lon"]) - 0.0002, 60.0


def _replay(flight_input, flight, embedder, heldout_cache):
    loc = Localizer(embedder, TileCache.load(heldout_cache, embedder.meta), LocalizerConfig(), start=_start(flight))
    return replay(flight_input, loc)


@pytest.fixture(scope="module")
def video_run(flight, embedder, heldout_cache):
    return _replay(open_flight(str(flight / "f.mp4"), load_telemetry(flight / "f.csv")), flight, embedder,
                   heldout_cache)


@pytest.mark.parametrize("kind", ["ros1", "ros2", "mcap"])
def test_a_bag_replays_as_its_video_and_csv(kind, tmp_path, flight, embedder, heldout_cache, video_run):
    bag = write_bag(tmp_path / ("f.bag" if kind == "ros1" else "f"), flight / "f.mp4", flight / "f.csv", kind)
    res = _replay(open_flight(str(bag)), flight, embedder, heldout_cache)
    a, b = video_run.report, res.report
    assert b["frames"] == a["frames"] == 120
    assert b["ok"] == a["ok"] > 100, (a, b)
    assert b["error_ok"]["median_m"] == pytest.approx(a["error_ok"]["median_m"], abs=1e-3)
    assert b["error_ok"]["max_m"] == pytest.approx(a["error_ok"]["max_m"], abs=1e-3)
    assert b["ok_within_3x_accuracy"] == a["ok_within_3x_accuracy"] == 1.0
    for ra, rb in zip(video_run.rows, res.rows):  # the same position frame by frame
        assert ra.est.status == rb.est.status
        if ra.est.has_position:
            assert math.hypot(ra.est.x - rb.est.x, ra.est.y - rb.est.y) < 1e-3


def test_a_compressed_image_topic_replays_too(tmp_path, flight, embedder, heldout_cache, video_run):
    bag = write_bag(tmp_path / "c.bag", flight / "f.mp4", flight / "f.csv", "ros1", compressed=True)
    rep = _replay(open_flight(str(bag)), flight, embedder, heldout_cache).report
    assert rep["frames"] == 120
    assert rep["availability_ok"] >= video_run.report["availability_ok"] - 0.05, rep
    assert rep["error_ok"]["max_m"] < 5.0 and rep["ok_within_3x_accuracy"] == 1.0, rep


def test_attitude_conventions():
    class Q:
        def __init__(self, w, x, y, z):
            self.w, self.x, self.y, self.z = w, x, y, z

    class Imu:
        def __init__(self, q):
            self.orientation = q

    def enu(heading, pitch_up=0.0):
        """An ENU/FLU quaternion for an aircraft heading `heading` (deg from north), nose up `pitch_up`."""
        yaw = math.radians(90.0 - heading)
        p = math.radians(-pitch_up)  # FLU: a positive rotation about y (left) puts the nose down
        qz = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        qy = (math.cos(p / 2), 0.0, math.sin(p / 2), 0.0)
        w1, x1, y1, z1 = qz
        w2, x2, y2, z2 = qy
        return Q(w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                 w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)

    for heading in (0.0, 45.0, 90.0, 200.0):
        roll, pitch, hdg = attitude_deg(Imu(enu(heading, 10.0)), "sensor_msgs/msg/Imu")
        assert hdg == pytest.approx(heading % 360, abs=1e-6) and pitch == pytest.approx(10.0, abs=1e-6)
        assert roll == pytest.approx(0.0, abs=1e-6)

    class Px4:
        q = np.array([math.cos(math.radians(30)), 0.0, 0.0, math.sin(math.radians(30))])  # NED: 60 deg yaw

    assert attitude_deg(Px4(), "px4_msgs/msg/VehicleAttitude")[2] == pytest.approx(60.0)


def test_bad_bags_get_one_line_errors(tmp_path, flight):
    no_camera = write_bag(tmp_path / "nocam.bag", flight / "f.mp4", flight / "f.csv", "ros1", image=False)
    with pytest.raises(SkylocError, match=r"has no image topic .*/mavros/global_position/global \(sensor_msgs/msg/NavSatFix") as e:
        open_flight(str(no_camera))
    assert "\n" not in str(e.value)
    bag = write_bag(tmp_path / "f.bag", flight / "f.mp4", flight / "f.csv", "ros1")
    with pytest.raises(SkylocError, match="has no topic /camera/left; its topics: /camera/image"):
        open_bag(bag, BagTopics(image="/camera/left"))
    with pytest.raises(SkylocError, match="is sensor_msgs/msg/Imu; --image-topic takes"):
        open_bag(bag, BagTopics(image="/mavros/imu/data"))
    corrupt = tmp_path / "corrupt.bag"
    corrupt.write_bytes(b"#ROSBAG V2.0\n" + bytes(range(256)) * 8)
    with pytest.raises(SkylocError, match="cannot read bag") as e:
        open_flight(str(corrupt))
    assert "\n" not in str(e.value)
    with pytest.raises(SkylocError, match="bag not found"):
        open_flight(str(tmp_path / "missing.bag"))
