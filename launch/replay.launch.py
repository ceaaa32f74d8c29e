"""Replay a bag into ditta_node and record the outputs (the evaluation route of the README).

    ros2 launch ditta_ros replay.launch.py bag:=camvid_bag out:=camvid_out [rate:=0.2]

Starts the node, `ditta bag play` on the bag and `ditta bag record` of the input and
/ditta/semantic; score the recording with `ditta bag eval out camvid_bag --out result`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("ditta_ros")
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="bag folder made by `ditta bag make`"),
        DeclareLaunchArgument("out", description="bag folder to record the outputs into"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "ditta.yaml")),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
        Node(package="ditta_ros", executable="ditta_node", name="ditta_node", output="screen",
             parameters=[LaunchConfiguration("params_file"), {"input_topic": "/camera/image_raw"}]),
        ExecuteProcess(cmd=["ditta", "bag", "record", "/camera/image_raw", "/ditta/semantic", "--out",
                            LaunchConfiguration("out"), "--idle-timeout", "30"], output="screen"),
        ExecuteProcess(cmd=["ditta", "bag", "play", LaunchConfiguration("bag"), "--rate", LaunchConfiguration("rate"),
                            "--topics", "/camera/image_raw"], output="screen"),
    ])
