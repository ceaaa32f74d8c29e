"""Launch ditta_node with the package's parameter file and a remappable image topic.

    ros2 launch ditta_ros ditta.launch.py image:=/camera/image_raw [namespace:=cam1] [params_file:=my.yaml]

With ``namespace:=cam1`` the outputs are /cam1/ditta/semantic, /cam1/ditta/status, ... and the
services /cam1/ditta_node/readapt, ...: one launch per camera. The params file's ``/**`` key
matches the node in any namespace.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ditta_ros.resources import profile_variables


def generate_launch_description():
    share = get_package_share_directory("ditta_ros")
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input image topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "ditta.yaml"),
                              description="ditta_node parameter file"),
        # the profile under the name(s) this distro's Fast DDS reads (FASTRTPS_... too on Jazzy and Humble)
        *[SetEnvironmentVariable(name, profile) for name in profile_variables()],
        Node(package="ditta_ros", executable="ditta_node", name="ditta_node", output="screen",
             namespace=LaunchConfiguration("namespace"), parameters=[LaunchConfiguration("params_file")],
             remappings=[("image", LaunchConfiguration("image"))]),
    ])
