"""Replay a bag into ditta_node and record the outputs (the evaluation route of the README).

    ros2 launch ditta_ros replay.launch.py bag:=camvid_bag out:=camvid_out [rate:=0.2]

Starts the node (``lazy: false``: every frame is answered even before it sees the recorder;
``wait_for_backend: true``: every label from the serving graph, as offline evaluation scores it), `ditta bag
record` of the input, /ditta/semantic and /ditta/status, and `ditta bag play` on the bag, which waits for both
subscribers (node and recorder) and pauses while the node adapts until it streams. `ditta` is this package's
script in `<prefix>/lib/ditta_ros/` (not on PATH after a colcon build; built with the venv's Python it runs
there). Score the recording with `ditta bag eval out camvid_bag --out result`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackagePrefix

from ditta_ros.resources import profile_variables


def generate_launch_description():
    share = get_package_share_directory("ditta_ros")
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    ditta = PathJoinSubstitution([FindPackagePrefix("ditta_ros"), "lib", "ditta_ros", "ditta"])
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="bag folder made by `ditta bag make`"),
        DeclareLaunchArgument("out", description="bag folder to record the outputs into"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "ditta.yaml")),
        # the profile under the name(s) this distro's Fast DDS reads (FASTRTPS_... too on Jazzy and Humble)
        *[SetEnvironmentVariable(name, profile) for name in profile_variables()],
        Node(package="ditta_ros", executable="ditta_node", name="ditta_node", output="screen",
             parameters=[LaunchConfiguration("params_file"), {"input_topic": "/camera/image_raw", "lazy": False,
                                                                 "wait_for_backend": True}]),
        ExecuteProcess(cmd=[ditta, "bag", "record", "/camera/image_raw", "/ditta/semantic", "/ditta/status",
                            "--out", LaunchConfiguration("out"), "--idle-timeout", "30"], output="screen"),
        # waits for the node and the recorder (2 subscribers); pauses while the node adapts, until STREAMING
        ExecuteProcess(cmd=[ditta, "bag", "play", LaunchConfiguration("bag"), "--rate", LaunchConfiguration("rate"),
                            "--topics", "/camera/image_raw", "--min-subscribers", "2", "--wait", "120",
                            "--pause-on", "ADAPTING", "--wait-state", "STREAMING"], output="screen"),
    ])
