"""Tooling around the deployable core: the ``ditta`` command (:mod:`.cli`), offline evaluation
(:mod:`.evaluate`, :mod:`.methods`), the development suite (:mod:`.suite`), the comparison
and demo through the real node (:mod:`.compare`, :mod:`.demo`, :mod:`.route`) and the rosbag2
tools (:mod:`.bag`, :mod:`.bag_ros`). Nothing here runs on the robot's serving path; the node
(:mod:`ditta_ros.node`) and the core never import this package."""
